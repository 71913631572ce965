//! The opt-in metrics listener (`mount --metrics-listen`): `GET /metrics` is the
//! same text as `.metrics`; `GET /healthz` is liveness (200 while the daemon's
//! FUSE session and refresh loops run, whatever the upstreams and consents) and
//! `GET /readyz` readiness (200 once every file serves a token or waits on its
//! user; 503 naming the files that do not, and why). Nothing else.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::cell::Cell;
use crate::health::Liveness;
use crate::listener::{Listen, Purpose};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serve metrics and health on `listen` (a socket only root can use).
pub async fn serve(listen: Listen, cells: Vec<Arc<Cell>>, liveness: Arc<Liveness>) {
    let purpose = Purpose {
        what: "metrics",
        serves: "/metrics, /healthz and /readyz",
        setting: "--metrics-listen",
        owner: None,
    };
    crate::listener::serve(listen, router(Arc::new(cells), liveness), purpose).await
}

fn router(cells: Arc<Vec<Arc<Cell>>>, liveness: Arc<Liveness>) -> Router {
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
        match liveness.check() {
            Ok(()) => (StatusCode::OK, "ok\n".to_owned()).into_response(),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not alive: {why}\n"),
            )
                .into_response(),
        }
    };
    let readyz = move || async move {
        crate::health::ask_pending(&cells);
        let not_ready = crate::health::not_ready(&cells);
        if not_ready.is_empty() {
            (StatusCode::OK, "ready\n".to_owned()).into_response()
        } else {
            let body = format!("not ready: {}\n", crate::health::describe(&not_ready));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}
