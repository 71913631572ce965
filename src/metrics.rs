//! The `.metrics` document: Prometheus text exposition (format 0.0.4) built from
//! cell snapshots, which never hold a token. Per file: upstream requests by
//! outcome, seconds until the current token expires, and whether it waits for
//! the user's consent.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cell::{Cell, StateName};

/// Render `.metrics` at `now`.
pub fn render(cells: &[Arc<Cell>], now: SystemTime) -> Vec<u8> {
    let snapshots: Vec<_> = cells
        .iter()
        .map(|c| (label(c.name()), c.status()))
        .collect();
    let mut out = String::new();
    header(
        &mut out,
        "tokenfs_refreshes_total",
        "counter",
        "Finished upstream requests (first issues and refreshes), by file and outcome.",
    );
    for (file, s) in &snapshots {
        let _ = writeln!(
            out,
            "tokenfs_refreshes_total{{file=\"{file}\",outcome=\"ok\"}} {}\n\
             tokenfs_refreshes_total{{file=\"{file}\",outcome=\"error\"}} {}",
            s.fetches.saturating_sub(s.failures),
            s.failures
        );
    }
    header(
        &mut out,
        "tokenfs_token_expiry_seconds",
        "gauge",
        "Seconds until the file's current token expires (negative once expired; absent before the first token).",
    );
    for (file, s) in &snapshots {
        if let Some(exp) = s.expires_at {
            let left = match exp.0.duration_since(now) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            let _ = writeln!(
                out,
                "tokenfs_token_expiry_seconds{{file=\"{file}\"}} {left:.3}"
            );
        }
    }
    header(
        &mut out,
        "tokenfs_consent_required",
        "gauge",
        "1 while the file waits for the user's consent, else 0.",
    );
    for (file, s) in &snapshots {
        let _ = writeln!(
            out,
            "tokenfs_consent_required{{file=\"{file}\"}} {}",
            u8::from(s.state == StateName::ConsentRequired)
        );
    }
    header(
        &mut out,
        "tokenfs_file_healthy",
        "gauge",
        "1 while the file serves a valid token or has not failed yet, else 0.",
    );
    for (file, s) in &snapshots {
        let healthy = match s.state {
            StateName::Fresh | StateName::Degraded => true,
            StateName::Empty | StateName::Fetching => s.last_error.is_none(),
            StateName::Failed | StateName::ConsentRequired | StateName::Expired => false,
        };
        let _ = writeln!(
            out,
            "tokenfs_file_healthy{{file=\"{file}\"}} {}",
            u8::from(healthy)
        );
    }
    out.into_bytes()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value escaped as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
