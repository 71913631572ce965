//! The opt-in metrics listener (`mount --metrics-listen`): `GET /metrics` is the
//! same text as `.metrics`, `GET /healthz` answers 200 while every file is
//! healthy (as `tokenfs status` judges it) and 503 otherwise. Nothing else.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::cell::Cell;
use crate::listener::{Listen, Purpose};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serve metrics and health on `listen` (a socket only root can use).
pub async fn serve(listen: Listen, cells: Vec<Arc<Cell>>) {
    let purpose = Purpose {
        what: "metrics",
        serves: "/metrics and /healthz",
        setting: "--metrics-listen",
        owner: None,
    };
    crate::listener::serve(listen, router(Arc::new(cells)), purpose).await
}

fn router(cells: Arc<Vec<Arc<Cell>>>) -> Router {
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
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
}
