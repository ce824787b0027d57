//! `nuwa serve`: the OpenAI chat-completions API over one loaded model, with the pruning method and
//! budget chosen per request (`"pruning": {"method": "nuwa", "budget": 64}`).
//!
//! One worker thread owns the model ([`worker`]); HTTP handlers parse and validate a request, queue it
//! (429 with `Retry-After` when the queue is full) and relay what the worker decodes, as one JSON answer
//! or as server-sent events. The server is stateless: scale out by running more of it.

pub mod metrics;
pub mod openai;
pub mod worker;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use metrics::Metrics;
use nuwa::prune::PruneSpec;
use nuwa::Engine;
use openai::{finish_reason, ApiError, ChatRequest, ImagePolicy, Usage};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use worker::{Event, Finished, Job};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name clients use in `model` (and `/v1/models` lists).
    pub served_model_name: String,
    /// Requests that may wait while one runs; more get 429.
    pub max_queue: usize,
    /// From accepting a request to its last token.
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Images whose header claims more pixels are refused before decoding.
    pub max_image_pixels: u64,
    /// `file://` image URLs are served from under this directory only; `None` refuses them.
    pub allow_local_images: Option<PathBuf>,
    /// Pruning for requests that do not say; a request's `pruning` object overrides single knobs.
    pub pruning: PruneSpec,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            served_model_name: "nuwa".into(),
            max_queue: 16,
            request_timeout: Duration::from_secs(600),
            max_body_bytes: 32 << 20,
            max_image_pixels: nuwa::preprocess::DEFAULT_MAX_PIXELS,
            allow_local_images: None,
            pruning: PruneSpec::default(),
        }
    }
}

struct App {
    config: ServerConfig,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

/// A bound, not yet serving server.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    worker: std::thread::JoinHandle<()>,
}

impl Server {
    /// Starts the worker on `engine` and binds `addr` (port 0 picks a free one).
    pub async fn bind(engine: Arc<Engine>, config: ServerConfig, addr: SocketAddr) -> std::io::Result<Self> {
        config.pruning.method().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let metrics = Arc::new(Metrics::default());
        let (jobs, worker) = worker::spawn(engine, metrics.clone(), config.max_queue);
        let app = Arc::new(App { config, jobs, metrics, next_id: AtomicU64::new(0), stopping: AtomicBool::new(false) });
        Ok(Self { listener, app, worker })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests (streams
    /// included) finish, and stops the worker.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let app = self.app.clone();
        let stopping = async move {
            shutdown.await;
            app.stopping.store(true, Ordering::SeqCst);
        };
        axum::serve(self.listener, router(self.app)).with_graceful_shutdown(stopping).await?;
        // The router (and with it the queue's sender) is gone: the worker drains and exits.
        tokio::task::spawn_blocking(move || self.worker.join()).await.ok();
        Ok(())
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown path").code("not_found")
        })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error (a bug)").into_response()
        }))
        .with_state(app)
}

/// How much of an oversized upload is read and dropped, and for how long, before the 413 is sent. Closing
/// a socket with unread bytes resets it, and the client then sees a broken connection instead of the
/// answer; draining a bounded amount first makes the 413 reach ordinary clients.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The request body, or 413 once it passes `limit` bytes (whatever its `content-length` claims).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut chunks = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            let mut seen = buf.len() + chunk.len();
            let drain = async {
                while let Some(Ok(c)) = chunks.next().await {
                    seen += c.len();
                    if seen > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than the server's limit of {limit} bytes"),
            )
            .code("request_too_large"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": app.config.served_model_name, "object": "model", "created": 0, "owned_by": "nuwa"}
    ]}))
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let depth = app.metrics.queue_depth.load(Ordering::Relaxed);
    if app.stopping.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "stopping"}))).into_response()
    } else if depth >= app.config.max_queue {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "queue full", "queue_depth": depth}))).into_response()
    } else {
        Json(json!({"status": "ready", "queue_depth": depth})).into_response()
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], app.metrics.render())
}

async fn chat(State(app): State<Arc<App>>, body: Body) -> Response {
    let response = match accept(&app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    app.metrics.answered(response.status().as_u16());
    response
}

/// Everything a chat request needs before its tokens: parse, validate, queue.
async fn accept(app: &Arc<App>, body: Body) -> Result<Response, ApiError> {
    let accepted = Instant::now();
    let body = read_body(body, app.config.max_body_bytes).await?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let req: ChatRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let err = ApiError::bad_request(format!("malformed request: {}", e.inner())).code("invalid_json");
        if path == "." || path == "?" {
            err
        } else {
            err.param(path)
        }
    })?;
    if let Some(m) = req.model.as_deref().filter(|m| *m != app.config.served_model_name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("model {m:?} is not served here (this server serves {:?})", app.config.served_model_name),
        )
        .param("model")
        .code("model_not_found"));
    }
    let spec = pruning_spec(&app.config.pruning, req.pruning.as_ref())?;
    let method = spec.method().map_err(ApiError::from)?;
    let (stream, include_usage) = (req.stream, req.stream_options.as_ref().is_some_and(|o| o.include_usage));
    // Decoding an image is CPU work: off the async threads.
    let app2 = app.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        let policy = ImagePolicy {
            max_image_pixels: app2.config.max_image_pixels,
            local_dir: app2.config.allow_local_images.as_deref(),
        };
        req.parse(&policy)
    })
    .await
    .map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error reading the request")
    })??;

    let (tx, rx) = mpsc::channel(64);
    let job = Job {
        request: parsed,
        method,
        positions: spec.positions,
        events: tx,
        accepted,
        deadline: accepted + app.config.request_timeout,
    };
    app.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = app.jobs.try_send(job) {
        app.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let full = matches!(e, mpsc::error::TrySendError::Full(_));
        let mut err = ApiError::new(
            if full { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::SERVICE_UNAVAILABLE },
            "rate_limit_error",
            if full { "the request queue is full; retry shortly" } else { "the server is stopping" },
        )
        .code(if full { "queue_full" } else { "stopping" });
        err.retry_after = Some(1);
        return Err(err);
    }
    let id = format!("chatcmpl-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let meta =
        Meta { id, created: unix_now(), model: app.config.served_model_name.clone(), method: spec.method.clone() };
    if stream {
        Ok(Sse::new(sse_stream(rx, meta, include_usage)).into_response())
    } else {
        answer(rx, meta, app.config.request_timeout).await
    }
}

/// The server's default spec with the request's `pruning` keys laid over it. Switching `method` drops
/// a default keep-list that belongs to the manual method.
fn pruning_spec(
    defaults: &PruneSpec,
    overrides: Option<&serde_json::Map<String, Value>>,
) -> Result<PruneSpec, ApiError> {
    let Some(overrides) = overrides else { return Ok(defaults.clone()) };
    let Value::Object(mut merged) = serde_json::to_value(defaults).expect("a spec serialises") else {
        unreachable!("a spec is an object")
    };
    if overrides.contains_key("method") && !overrides.contains_key("keep") {
        merged.insert("keep".into(), Value::Null);
    }
    for (k, v) in overrides {
        if !merged.contains_key(k) {
            let known: Vec<&String> = merged.keys().collect();
            return Err(ApiError::bad_request(format!("pruning.{k} is not a pruning setting (known: {known:?})"))
                .param(format!("pruning.{k}")));
        }
        merged.insert(k.clone(), v.clone());
    }
    serde_path_to_error::deserialize(Value::Object(merged)).map_err(|e| {
        ApiError::bad_request(format!("pruning.{}: {}", e.path(), e.inner())).param(format!("pruning.{}", e.path()))
    })
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    method: String,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn usage(f: &Finished) -> Usage {
    let vision = f.vision.as_ref().map_or(0, |v| v.k1);
    Usage {
        prompt_tokens: f.prompt_tokens + vision,
        completion_tokens: f.completion_tokens,
        total_tokens: f.prompt_tokens + vision + f.completion_tokens,
        vision_tokens: vision,
    }
}

/// What pruning did, in the response.
fn pruning_report(f: &Finished, meta: &Meta) -> Value {
    match &f.vision {
        None => json!({"method": meta.method, "image": false}),
        Some(v) => json!({
            "method": v.method, "budget": v.budget, "positions": v.positions,
            "avg_vision_tokens": v.avg_vision_tokens, "k1": v.k1, "k2": v.k2, "stage2_layer": v.stage2_layer,
            "kept": v.stage2.len(),
        }),
    }
}

async fn answer(mut rx: mpsc::Receiver<Event>, meta: Meta, limit: Duration) -> Result<Response, ApiError> {
    let collect = async {
        while let Some(event) = rx.recv().await {
            match event {
                Event::Text(_) => {}
                Event::Done(f) => return Ok(f),
                Event::Failed(e) => return Err(e),
            }
        }
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the worker dropped the request"))
    };
    let f = tokio::time::timeout(limit, collect).await.map_err(|_| {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "the request ran past the server's request timeout")
            .code("timeout")
    })??;
    Ok(Json(json!({
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f.text},
                     "finish_reason": finish_reason(f.stop_reason)}],
        "usage": usage(&f),
        "pruning": pruning_report(&f, &meta),
    }))
    .into_response())
}

fn chunk(meta: &Meta, delta: Value, finish: Option<&str>) -> SseEvent {
    SseEvent::default().data(
        json!({
            "id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string(),
    )
}

/// `data: {chunk}` events: the role, one per piece of text, the finish reason (with the pruning
/// report), usage when asked for, then `data: [DONE]`. Dropping the stream (client gone) closes the
/// channel, which stops the worker's decoding.
fn sse_stream(
    rx: mpsc::Receiver<Event>,
    meta: Meta,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let mut pending = VecDeque::new();
    pending.push_back(chunk(&meta, json!({"role": "assistant", "content": ""}), None));
    stream::unfold((rx, meta, pending, false), move |(mut rx, meta, mut pending, mut ended)| async move {
        loop {
            if let Some(e) = pending.pop_front() {
                return Some((Ok(e), (rx, meta, pending, ended)));
            }
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(Event::Text(t)) => pending.push_back(chunk(&meta, json!({"content": t}), None)),
                Some(Event::Done(f)) => {
                    let mut last = json!({
                        "id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason(f.stop_reason)}],
                        "pruning": pruning_report(&f, &meta),
                    });
                    if include_usage {
                        pending.push_back(SseEvent::default().data(last.to_string()));
                        last = json!({
                            "id": meta.id, "object": "chat.completion.chunk", "created": meta.created,
                            "model": meta.model, "choices": [], "usage": usage(&f),
                        });
                    }
                    pending.push_back(SseEvent::default().data(last.to_string()));
                    pending.push_back(SseEvent::default().data("[DONE]"));
                    ended = true;
                }
                Some(Event::Failed(e)) => {
                    pending.push_back(SseEvent::default().data(e.body().to_string()));
                    pending.push_back(SseEvent::default().data("[DONE]"));
                    ended = true;
                }
                None => {
                    let e = ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "the worker dropped the request",
                    );
                    pending.push_back(SseEvent::default().data(e.body().to_string()));
                    pending.push_back(SseEvent::default().data("[DONE]"));
                    ended = true;
                }
            }
        }
    })
}
