//! The one thread that owns the model: it takes requests from a bounded queue, decodes each through a
//! [`nuwa::Session`], streams text back, and stops a request whose client has gone or whose time is up.
//! A panic inside one request answers that request with a 500 and the worker goes on.

use crate::metrics::Metrics;
use crate::openai::{ApiError, Parsed};
use axum::http::StatusCode;
use nuwa::prune::{Method, PositionPolicy};
use nuwa::{Engine, ImageInput, SessionOptions, StopReason, VisionReport};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub struct Job {
    pub request: Parsed,
    pub method: Method,
    pub positions: Option<PositionPolicy>,
    pub events: mpsc::Sender<Event>,
    pub accepted: Instant,
    pub deadline: Instant,
}

pub enum Event {
    /// Newly printable text (never empty).
    Text(String),
    Done(Box<Finished>),
    Failed(ApiError),
}

pub struct Finished {
    pub text: String,
    pub stop_reason: StopReason,
    /// Text tokens of the prompt.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub vision: Option<VisionReport>,
}

/// Starts the worker; requests go into the returned sender (at most `capacity` waiting).
pub fn spawn(
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    capacity: usize,
) -> (mpsc::Sender<Job>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(capacity.max(1));
    let handle = std::thread::Builder::new()
        .name("nuwa-worker".into())
        .spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                let events = job.events.clone();
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&engine, &metrics, job)));
                let failure = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("unknown");
                        Some(ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "server_error",
                            format!("internal error while serving this request (a bug: {what})"),
                        ))
                    }
                };
                if let Some(e) = failure {
                    let _ = events.blocking_send(Event::Failed(e));
                }
            }
        })
        .expect("spawning the worker thread");
    (tx, handle)
}

fn timeout() -> ApiError {
    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "the request ran past the server's request timeout")
        .code("timeout")
}

fn run(engine: &Engine, metrics: &Metrics, job: Job) -> Result<(), ApiError> {
    if job.events.is_closed() {
        return Ok(()); // the client left while the request was queued
    }
    if Instant::now() > job.deadline {
        return Err(timeout());
    }
    let r = job.request;
    let prompt = engine.conversation_prompt(&r.conversation)?;
    let image = r.image.map(ImageInput::Decoded);
    let state = engine.prefill_image(&prompt, image.as_ref(), &job.method, job.positions)?;
    let (vision, prompt_tokens) = (state.vision.clone(), state.prompt_tokens);
    let opts = SessionOptions { max_new_tokens: r.max_tokens, stop: r.stop, ignore_eos: false };
    let mut session = engine.session(state, &r.sampling, opts)?;
    let mut last: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        if job.events.is_closed() {
            session.cancel();
            break;
        }
        if Instant::now() > job.deadline {
            session.cancel();
            timed_out = true;
            break;
        }
        let Some(step) = session.step()? else { break };
        let now = Instant::now();
        match last {
            None => metrics.first_token((now - job.accepted).as_secs_f64()),
            Some(t) => metrics.token((now - t).as_secs_f64()),
        }
        last = Some(now);
        if !step.text.is_empty() && job.events.blocking_send(Event::Text(step.text)).is_err() {
            session.cancel();
            break;
        }
    }
    let rest = session.pending_text();
    if !rest.is_empty() {
        let _ = job.events.blocking_send(Event::Text(rest));
    }
    let generation = session.finish();
    let vision_tokens = vision.as_ref().map_or(0, |v| v.k1);
    metrics.tokens(prompt_tokens, vision_tokens, generation.tokens.len());
    if timed_out {
        return Err(timeout());
    }
    let done = Finished {
        text: generation.text,
        stop_reason: generation.stop_reason,
        prompt_tokens,
        completion_tokens: generation.tokens.len(),
        vision,
    };
    let _ = job.events.blocking_send(Event::Done(Box::new(done)));
    Ok(())
}
