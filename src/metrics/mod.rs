//! Prometheus text exposition (format 0.0.4), served as `.metrics` in the mount
//! and, opt-in, over loopback HTTP ([`http`]). Built from cell snapshots and
//! counters, which never hold a token. Per file: upstream requests by outcome
//! and their latency, reads the daemon served, seconds until the current token
//! expires, and whether it waits for the user's consent.

pub mod http;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cell::Cell;
use crate::health::Readiness;
use crate::status::schema::{CellStatus, StateName};

/// Render the metrics at the cells' present (their clock is the one that matters).
pub fn render_now(cells: &[Arc<Cell>]) -> Vec<u8> {
    let now = cells.first().map_or_else(SystemTime::now, |c| c.now());
    render(cells, now)
}

/// One file's line of every family.
struct Row<'a> {
    /// The file name, escaped as a label value.
    file: String,
    cell: &'a Cell,
    status: CellStatus,
}

/// Render `.metrics` at `now`.
pub fn render(cells: &[Arc<Cell>], now: SystemTime) -> Vec<u8> {
    let rows: Vec<Row> = cells
        .iter()
        .map(|c| Row {
            file: label(c.name()),
            cell: c,
            status: c.status(),
        })
        .collect();
    let mut out = String::new();
    header(
        &mut out,
        "tokenfs_refreshes_total",
        "counter",
        "Finished upstream requests (first issues and refreshes), by file and outcome.",
    );
    for Row {
        file, status: s, ..
    } in &rows
    {
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
    for Row { file, cell, .. } in &rows {
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
    per_file(
        &mut out,
        &rows,
        ("tokenfs_reads_total", "counter"),
        "Reads of the file the daemon answered; the kernel's page cache serves the rest without asking it.",
        |r| Some(r.cell.reads().to_string()),
    );
    per_file(
        &mut out,
        &rows,
        ("tokenfs_token_expiry_seconds", "gauge"),
        "Seconds until the file's current token expires (negative once expired; absent before the first token).",
        |r| {
            let exp = r.status.expires_at?.0;
            let left = match exp.duration_since(now) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            Some(format!("{left:.3}"))
        },
    );
    per_file(
        &mut out,
        &rows,
        ("tokenfs_consent_required", "gauge"),
        "1 while the file waits for the user's consent, else 0.",
        |r| flag(r.status.state == StateName::ConsentRequired),
    );
    per_file(
        &mut out,
        &rows,
        ("tokenfs_refresh_token_unsaved", "gauge"),
        "1 while the refresh token the upstream last rotated in could not be saved (it is lost when tokenfs restarts), else 0.",
        |r| flag(r.status.unsaved_refresh_token.is_some()),
    );
    per_file(
        &mut out,
        &rows,
        ("tokenfs_file_healthy", "gauge"),
        "0 while the file's upstream fails, else 1 (waiting on the user's consent or login is not a failure).",
        |r| flag(!Readiness::of_status(&r.status).failing()),
    );
    out.into_bytes()
}

/// A family with one sample per file, labelled only by `file`; a file whose
/// `value` is `None` has no sample.
fn per_file(
    out: &mut String,
    rows: &[Row],
    (name, kind): (&str, &str),
    help: &str,
    value: impl Fn(&Row) -> Option<String>,
) {
    header(out, name, kind, help);
    for row in rows {
        if let Some(v) = value(row) {
            let _ = writeln!(out, "{name}{{file=\"{}\"}} {v}", row.file);
        }
    }
}

fn flag(on: bool) -> Option<String> {
    Some(u8::from(on).to_string())
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
