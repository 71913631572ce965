//! The `.status` document: per file state, expiry, last refresh and last error.
//! Built from cell snapshots, which never hold a token; its types are in
//! [`schema`], below the cell.

pub mod schema;

use std::sync::Arc;

use crate::cell::Cell;
pub use schema::{rfc3339, CellStatus, Document, FileStatus, Reported, StateName, Timestamp};

/// Render `.status` as pretty JSON with a trailing newline.
pub fn render(cells: &[Arc<Cell>], login_socket: Option<&std::path::Path>) -> Vec<u8> {
    let doc = Document {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        login_socket: login_socket.map(ToOwned::to_owned),
        files: cells
            .iter()
            .map(|c| FileStatus {
                name: c.name().to_owned(),
                upstream: c.upstream(),
                cell: c.status(),
            })
            .collect(),
    };
    let mut out = serde_json::to_vec_pretty(&doc).expect("status serializes");
    out.push(b'\n');
    out
}
