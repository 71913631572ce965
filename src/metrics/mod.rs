//! Prometheus text exposition (format 0.0.4), served as `.metrics` in the mount
//! and, opt-in, over loopback HTTP ([`http`]). Built from cell snapshots and
//! counters, which never hold a token. Per file: upstream requests by outcome
//! and their latency, reads the daemon served, seconds until the current token
//! expires, and whether it waits for the user's consent.

pub mod histogram;
pub mod http;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cell::{Cell, StateName};

/// Render the metrics at the cells' present (their clock is the one that matters).
pub fn render_now(cells: &[Arc<Cell>]) -> Vec<u8> {
    let now = cells.first().map_or_else(SystemTime::now, |c| c.now());
    render(cells, now)
}

/// Render `.metrics` at `now`.
pub fn render(cells: &[Arc<Cell>], now: SystemTime) -> Vec<u8> {
    let snapshots: Vec<_> = cells
        .iter()
        .map(|c| (label(c.name()), c.status()))
        .collect();
    let labelled = || cells.iter().map(|c| (label(c.name()), c));
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
        "tokenfs_upstream_request_duration_seconds",
        "histogram",
        "Duration of upstream requests (first issues and refreshes), by file, whatever their outcome.",
    );
    for (file, cell) in labelled() {
        let h = cell.latency().snapshot();
        for (le, count) in &h.cumulative {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            let _ = writeln!(
                out,
                "tokenfs_upstream_request_duration_seconds_bucket{{file=\"{file}\",le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "tokenfs_upstream_request_duration_seconds_sum{{file=\"{file}\"}} {:.6}\n\
             tokenfs_upstream_request_duration_seconds_count{{file=\"{file}\"}} {}",
            h.sum_seconds, h.count
        );
    }
    header(
        &mut out,
        "tokenfs_reads_total",
        "counter",
        "Reads of the file the daemon answered; the kernel's page cache serves the rest without asking it.",
    );
    for (file, cell) in labelled() {
        let _ = writeln!(
            out,
            "tokenfs_reads_total{{file=\"{file}\"}} {}",
            cell.reads()
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
        "tokenfs_refresh_token_unsaved",
        "gauge",
        "1 while the refresh token the upstream last rotated in could not be saved (it is lost when tokenfs restarts), else 0.",
    );
    for (file, s) in &snapshots {
        let _ = writeln!(
            out,
            "tokenfs_refresh_token_unsaved{{file=\"{file}\"}} {}",
            u8::from(s.unsaved_refresh_token.is_some())
        );
    }
    header(
        &mut out,
        "tokenfs_file_healthy",
        "gauge",
        "1 while the file serves a valid token or has not failed yet, else 0.",
    );
    for (file, s) in &snapshots {
        let _ = writeln!(
            out,
            "tokenfs_file_healthy{{file=\"{file}\"}} {}",
            u8::from(s.healthy())
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
