//! The opt-in metrics listener (`mount --metrics-listen`): `GET /metrics` is the
//! same text as `.metrics`, `GET /healthz` answers 200 while every file is
//! healthy (as `tokenfs status` judges it) and 503 otherwise. Nothing else.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::cell::Cell;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bind before mounting, so a taken port fails the start with a clear error.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen for metrics on {addr} (--metrics-listen): is the port taken?")
    })?;
    listener.set_nonblocking(true)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "metrics are served without authentication on a non-loopback address"
        );
    }
    Ok(listener)
}

/// Serve until the runtime shuts down.
pub async fn serve(listener: std::net::TcpListener, cells: Vec<Arc<Cell>>) {
    let cells = Arc::new(cells);
    let metrics = {
        let cells = cells.clone();
        move || async move {
            (
                [(header::CONTENT_TYPE, CONTENT_TYPE)],
                super::render_now(&cells),
            )
        }
    };
    let healthz = move || async move {
        let sick: Vec<_> = cells
            .iter()
            .filter(|c| !c.status().healthy())
            .map(|c| c.name().to_owned())
            .collect();
        if sick.is_empty() {
            (StatusCode::OK, "ok\n".to_owned()).into_response()
        } else {
            let body = format!("unhealthy: {}\n", sick.join(" "));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving /metrics and /healthz");
            }
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics listener stopped: {e}");
            }
        }
        Err(e) => tracing::error!("metrics listener cannot start: {e}"),
    }
}
