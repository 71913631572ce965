//! Where log events go: stderr as text or JSON lines, or the systemd journal with
//! structured fields. Whatever the target, events never carry a token or secret.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;

/// Install the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: never escape codes in a pipe, a
    // file or the journal (systemd connects stderr to it).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let (layer, fallback) = match format {
        LogFormat::Text => (text(), None),
        LogFormat::Json => (
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .boxed(),
            None,
        ),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journal) => (
                journal
                    .with_syslog_identifier("tokenfs".to_owned())
                    // Fields as journalctl users expect them: FILE=, JTI=, not F_FILE=.
                    .with_field_prefix(None)
                    .boxed(),
                None,
            ),
            Err(e) => (text(), Some(e)),
        },
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
    if let Some(e) = fallback {
        tracing::warn!("cannot reach the systemd journal ({e}); logging to stderr instead");
    }
}
