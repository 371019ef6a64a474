//! The admin endpoint: HTTP/1.1 on the node's `admin` address (loopback by default).
//!
//! - `GET /health`: `200 ok` when the node serves requests; otherwise `503` with the reason in
//!   the body (shutting down, holds no partitions).
//! - `GET /metrics`: every metric of the node in Prometheus text format (the metric list is in
//!   the runtime's `metrics` module docs).
//! - `POST /anti-entropy/pause`, `POST /anti-entropy/resume`: stop and restart anti-entropy
//!   rounds on this node (to measure what it costs); answers `paused` or `running`.
//!
//! ```no_run
//! # async fn demo(
//! #     node: std::sync::Arc<shoal_node::Node<shoal_node::QuicTransport, shoal_storage::MemoryStore>>,
//! # ) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7200").await?;
//! let admin = shoal_node::admin::spawn(node.clone(), listener);
//! # drop(admin);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use shoal_storage::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::runtime::Node;
use crate::transport::Transport;

/// Content type of `/metrics` (Prometheus text exposition).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoint on `listener` until the node stops.
pub fn spawn<T: Transport, S: Store>(
    node: Arc<Node<T, S>>,
    listener: TcpListener,
) -> JoinHandle<()> {
    let cancel = node.cancellation();
    let app = Router::new()
        .route("/health", get(health::<T, S>))
        .route("/metrics", get(metrics::<T, S>))
        .route("/anti-entropy/pause", post(pause::<T, S>))
        .route("/anti-entropy/resume", post(resume::<T, S>))
        .with_state(node);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "admin endpoint stopped");
        }
    })
}

async fn health<T: Transport, S: Store>(State(node): State<Arc<Node<T, S>>>) -> impl IntoResponse {
    match node.unhealthy() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn pause<T: Transport, S: Store>(State(node): State<Arc<Node<T, S>>>) -> &'static str {
    node.pause_anti_entropy(true);
    tracing::info!("anti-entropy paused");
    "paused\n"
}

async fn resume<T: Transport, S: Store>(State(node): State<Arc<Node<T, S>>>) -> &'static str {
    node.pause_anti_entropy(false);
    tracing::info!("anti-entropy resumed");
    "running\n"
}

async fn metrics<T: Transport, S: Store>(State(node): State<Arc<Node<T, S>>>) -> impl IntoResponse {
    // The store reads inside (hint backlog, size) go through the runtime's blocking wrapper.
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        node.render_metrics(),
    )
}
