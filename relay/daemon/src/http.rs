//! The observability endpoint: `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Why the metrics server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Binding the listener failed, such as for a port already taken.
    #[error("failed to listen on metrics address {addr}: {source}")]
    Listen {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// Serving failed after the listener was bound.
    #[error("metrics server failed: {0}")]
    Serve(std::io::Error),
}

/// Readiness: the UDP socket is bound and the key set is loaded.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the process ready: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`Readiness::set_ready`] has been called.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

struct AppState {
    registry: Registry,
    ready: Arc<Readiness>,
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// A bound metrics listener; binding early makes a taken port a startup error.
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl MetricsServer {
    /// Binds `addr` and sets up `/metrics` (encoding `registry`), `/healthz` and `/readyz`
    /// (answering from `ready`); nothing is served until [`MetricsServer::serve`].
    pub async fn bind(
        addr: SocketAddr,
        registry: Registry,
        ready: Arc<Readiness>,
    ) -> Result<Self, HttpError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Listen { addr, source })?;
        let state = Arc::new(AppState { registry, ready });
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(state);
        Ok(Self { listener, router })
    }

    /// The address actually bound, such as the port picked for port 0.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves requests until serving fails or the future is dropped.
    pub async fn serve(self) -> Result<(), HttpError> {
        axum::serve(self.listener, self.router)
            .await
            .map_err(HttpError::Serve)
    }
}
