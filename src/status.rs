//! The `.status` document: per file state, expiry, last refresh and last error.
//! Built from cell snapshots, which never hold a token.

use std::sync::Arc;

use serde::Serialize;

use crate::cell::{Cell, CellStatus};

#[derive(Serialize)]
struct FileStatus<'a> {
    name: &'a str,
    upstream: String,
    #[serde(flatten)]
    cell: CellStatus,
}

#[derive(Serialize)]
struct Document<'a> {
    version: &'static str,
    /// Where `tokenfs consent` hands a code login's redirect to this daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    login_socket: Option<&'a std::path::Path>,
    files: Vec<FileStatus<'a>>,
}

/// Render `.status` as pretty JSON with a trailing newline.
pub fn render(cells: &[Arc<Cell>], login_socket: Option<&std::path::Path>) -> Vec<u8> {
    let doc = Document {
        version: env!("CARGO_PKG_VERSION"),
        login_socket,
        files: cells
            .iter()
            .map(|c| FileStatus {
                name: c.name(),
                upstream: c.upstream(),
                cell: c.status(),
            })
            .collect(),
    };
    let mut out = serde_json::to_vec_pretty(&doc).expect("status serializes");
    out.push(b'\n');
    out
}
