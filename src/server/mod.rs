//! An OpenAI-compatible HTTP server over the engine (axum on tokio).
//!
//! The engine runs on its own thread ([`worker`]); handlers tokenize, check the request
//! against the context and hand the engine token ids. Routes: `POST /v1/completions`,
//! `POST /v1/chat/completions` (both with `stream: true` as server-sent events),
//! `GET /v1/models`, `GET /health`, `GET /metrics`.

mod connection;
mod error;
mod metrics;
mod openai;
mod protocol;
mod respond;
mod worker;

pub use error::ApiError;
pub use metrics::Metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;

use crate::engine::{Engine, SamplingParams};
use crate::error::Error;
use crate::Tokenizer;
use worker::{Command, Worker};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free one (see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// The name clients pass as `model` and `/v1/models` lists.
    pub served_model_name: String,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// After a shutdown signal, how long in-flight requests may run before they are
    /// aborted.
    pub shutdown_grace: Duration,
    /// A client that reads nothing of its response for this long is disconnected (and
    /// its request aborted); so is one whose request headers or body take longer to
    /// arrive.
    pub stalled_client_timeout: Duration,
    /// Most tokens one request may ask to generate: prompts × `n` × `max_tokens`.
    pub max_request_tokens: usize,
    /// Shut down on SIGINT/SIGTERM (the CLI); embedders call [`Server::shutdown`].
    pub handle_signals: bool,
}

impl ServerConfig {
    pub fn new(served_model_name: impl Into<String>) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            served_model_name: served_model_name.into(),
            api_key: None,
            max_body_bytes: 4 << 20,
            shutdown_grace: Duration::from_secs(30),
            stalled_client_timeout: Duration::from_secs(60),
            max_request_tokens: 1 << 18,
            handle_signals: false,
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    config: ServerConfig,
    commands: mpsc::Sender<Command>,
    tokenizer: Option<Arc<Tokenizer>>,
    /// The model's generation_config.json defaults.
    defaults: SamplingParams,
    max_model_len: usize,
    metrics: Arc<Metrics>,
    created: u64,
    /// Cleared when the engine thread ends; `/health` reports it.
    engine_alive: Arc<AtomicBool>,
}

/// Clears the flag when the engine thread ends, however it ends.
struct EngineAlive(Arc<AtomicBool>);

impl Drop for EngineAlive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
        if std::thread::panicking() {
            tracing::error!("the engine thread panicked; requests will get 503 and /health reports the engine down");
        }
    }
}

impl AppState {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(name) if name != self.config.served_model_name => Err(ApiError::model_not_found(name)),
            _ => Ok(()),
        }
    }

    fn tokenizer(&self) -> Result<&Tokenizer, ApiError> {
        self.tokenizer.as_deref().ok_or_else(|| ApiError::bad_request("this model has no tokenizer: send token ids as `prompt`"))
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.as_ref().and_then(|t| t.decode(ids, false).ok()).unwrap_or_default()
    }
}

/// A running server: the engine thread and the HTTP thread.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<Result<(), Error>>>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Binds the address, starts the engine thread and serves until [`Server::shutdown`]
    /// (or a signal, with `handle_signals`).
    pub fn start(engine: Engine, config: ServerConfig) -> Result<Self, Error> {
        let io_error = |source| Error::Io { path: config.addr.to_string().into(), source };
        let listener = std::net::TcpListener::bind(config.addr).map_err(io_error)?;
        listener.set_nonblocking(true).map_err(io_error)?;
        let addr = listener.local_addr().map_err(io_error)?;

        let metrics = Arc::new(Metrics::new(engine.stats()));
        let tokenizer = engine.loaded().tokenizer.clone().map(Arc::new);
        let defaults = engine.loaded().generation.sampling_defaults();
        let max_model_len = engine.max_model_len();
        let (commands, receiver) = mpsc::channel();
        let worker = Worker::new(engine, metrics.clone());
        let engine_alive = Arc::new(AtomicBool::new(true));
        let alive = EngineAlive(engine_alive.clone());
        let engine_thread = std::thread::Builder::new()
            .name("ember-engine".into())
            .spawn(move || {
                let _alive = alive;
                worker.run(receiver)
            })
            .map_err(|e| Error::Device(format!("starting the engine thread: {e}")))?;
        let state = Arc::new(AppState {
            config,
            commands,
            tokenizer,
            defaults,
            max_model_len,
            metrics: metrics.clone(),
            created: respond::unix_time(),
            engine_alive,
        });
        let (stop, stopped) = oneshot::channel();
        let http = std::thread::Builder::new()
            .name("ember-http".into())
            .spawn(move || serve(state, listener, stopped, engine_thread))
            .map_err(|e| Error::Device(format!("starting the HTTP thread: {e}")))?;
        Ok(Self { addr, stop: Some(stop), http: Some(http), metrics })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting connections, lets in-flight requests finish (up to the grace
    /// period), then stops the engine.
    pub fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait()
    }

    /// Blocks until the server has stopped (after a signal, with `handle_signals`).
    pub fn wait(mut self) -> Result<(), Error> {
        match self.http.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Device("the HTTP thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(http) = self.http.take() {
            let _ = http.join();
        }
    }
}

fn serve(state: Arc<AppState>, listener: std::net::TcpListener, stopped: oneshot::Receiver<()>, engine_thread: JoinHandle<()>) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Device(format!("starting the async runtime: {e}")))?;
    let commands = state.commands.clone();
    let abort_commands = commands.clone();
    let grace = state.config.shutdown_grace;
    let handle_signals = state.config.handle_signals;
    let stall_timeout = state.config.stalled_client_timeout;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Io { path: "listener".into(), source })?;
        let listener = connection::StallGuardedListener::new(listener, stall_timeout);
        let (stopping, stopping_seen) = oneshot::channel::<()>();
        let shutdown = async move {
            shutdown_requested(stopped, handle_signals).await;
            tracing::info!("shutting down: finishing in-flight requests (at most {grace:?})");
            let _ = stopping.send(());
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = abort_commands.send(Command::AbortAll);
            });
        };
        let served = connection::serve_connections(listener, router(state), stall_timeout, shutdown);
        // Connections that outlive the grace period and a little more (a client that
        // never finishes sending its request) are closed with the runtime.
        let deadline = async move {
            match stopping_seen.await {
                Ok(()) => tokio::time::sleep(grace + Duration::from_secs(5)).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = served => Ok(()),
            () = deadline => {
                tracing::warn!("closing connections still open after the grace period");
                Ok(())
            }
        }
    });
    let _ = commands.send(Command::Shutdown);
    let _ = engine_thread.join();
    result
}

async fn shutdown_requested(stopped: oneshot::Receiver<()>, handle_signals: bool) {
    if !handle_signals {
        let _ = stopped.await;
        return;
    }
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = stopped => {}
        _ = interrupt => {}
        _ = terminate => {}
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(prometheus))
        .route("/health", get(health))
        // The fallbacks read the body too: an unread body makes the connection unusable
        // for the client's next request.
        .fallback(|uri: Uri, _body: Bytes| async move { ApiError::route_not_found(uri.path()) })
        .method_not_allowed_fallback(|_body: Bytes| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), buffer_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), count_responses))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.config.served_model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "ember",
            "max_model_len": state.max_model_len,
        }],
    }))
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine_alive.load(Ordering::SeqCst) {
        StatusCode::OK.into_response()
    } else {
        ApiError::unavailable("the engine has stopped").into_response()
    }
}

/// Reads the whole body before routing, within the body limit and the stalled-client
/// timeout: a client that sends half a body cannot hold a handler (or shutdown) forever.
async fn buffer_body(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(state.config.stalled_client_timeout, read_body(body, limit)).await {
        Ok(Ok(Some(bytes))) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Ok(Ok(None)) => ApiError::payload_too_large(limit).into_response(),
        Ok(Err(error)) => ApiError::bad_request(format!("could not read the body: {error}")).into_response(),
        Err(_) => ApiError::request_timeout(state.config.stalled_client_timeout).into_response(),
    }
}

/// The body, or `None` when it is larger than `limit`. An oversized body is still read
/// (and dropped) up to a few times the limit, so the client, still sending, gets the 413
/// instead of a broken pipe; beyond that the connection is simply closed.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Option<Vec<u8>>, axum::Error> {
    use futures_util::StreamExt;
    let drain_limit = limit.saturating_mul(4).max(16 << 20);
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total = total.saturating_add(chunk.len());
        if total > drain_limit {
            return Ok(None);
        }
        if total <= limit {
            bytes.extend_from_slice(&chunk);
        }
    }
    Ok((total <= limit).then_some(bytes))
}

async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.config.api_key else { return next.run(request).await };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), key.as_bytes()) => next.run(request).await,
        _ => {
            // Drain the body so the connection stays usable (see `router`).
            let _ = axum::body::to_bytes(request.into_body(), state.config.max_body_bytes).await;
            ApiError::unauthorized().into_response()
        }
    }
}

async fn count_responses(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.metrics.observe_http(response.status().as_u16());
    response
}

/// Compares keys without leaking, through timing, how long a matching prefix is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
