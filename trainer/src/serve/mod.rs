//! An OpenAI-compatible HTTP server over a continuously batched generation engine.
//!
//! `http` parses and checks requests (`api`), hands one job per choice to the `scheduler` thread,
//! which owns a [`engine::DecodeEngine`] and steps all admitted sequences together; a request that
//! arrives mid-generation joins the batch at the next step. `fake` is a deterministic engine for
//! tests and for driving the server without a model. `template` wraps a request's question in the
//! prompt template the checkpoint was trained with (or another, or none).

pub mod api;
pub mod engine;
pub mod error;
pub mod fake;
pub mod http;
pub mod model_engine;
pub mod scheduler;
pub mod template;

use std::future::Future;
use std::sync::Arc;

/// Everything needed to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Request limits.
    pub limits: api::Limits,
    /// Batch and queue sizes.
    pub scheduler: scheduler::SchedulerConfig,
    /// Bearer key clients must send, if any.
    pub api_key: Option<String>,
}

/// Serve on `listener` until `shutdown` resolves; in-flight requests are then finished, the
/// scheduler drains, and its thread is joined.
pub async fn run_server(
    listener: tokio::net::TcpListener,
    engine: Box<dyn engine::DecodeEngine>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (handle, thread) = scheduler::spawn(engine, config.scheduler)?;
    let state = http::AppState {
        scheduler: handle,
        limits: config.limits,
        api_key: config.api_key.map(Arc::from),
        next_id: Arc::default(),
    };
    let app = http::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    // The router (and with it the last scheduler handle) is gone: the thread drains and ends.
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(std::io::Error::other)?
        .map_err(|_| std::io::Error::other("the scheduler thread panicked"))
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
