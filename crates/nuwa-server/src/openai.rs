//! The OpenAI chat-completions shapes this server reads and writes, the error object, and the
//! translation of a request into the library's conversation, image and sampling.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use nuwa::prompt::{Conversation, Message, Part, Role};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

/// `{"error": {"message", "type", "param", "code"}}` with its HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", s.into());
        }
        r
    }
}

/// A library error as the client's fault (400, naming the parameter) or the server's (500).
impl From<nuwa::Error> for ApiError {
    fn from(e: nuwa::Error) -> Self {
        use nuwa::Error as E;
        match &e {
            E::Invalid { field, .. } => {
                let param = match *field {
                    "prompt" | "messages" => "messages".to_owned(),
                    "max_new_tokens" => "max_tokens".to_owned(),
                    "temperature" | "top_p" | "stop" => field.to_string(),
                    f => format!("pruning.{f}"),
                };
                ApiError::bad_request(e.to_string()).param(param).code("invalid_value")
            }
            E::ContextOverflow { .. } => {
                ApiError::bad_request(e.to_string()).param("messages").code("context_length_exceeded")
            }
            E::Image(_) => ApiError::bad_request(e.to_string()).param("messages").code("invalid_image"),
            E::Unsupported(_) => ApiError::bad_request(e.to_string()).code("unsupported"),
            E::Tokenizer { .. } => ApiError::bad_request(e.to_string()).param("messages"),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<usize>,
    /// Overrides of the server's default pruning, with the CLI's names (`method`, `budget`, …).
    pub pruning: Option<serde_json::Map<String, Value>>,
    /// Everything else: refused when it asks for a feature this server lacks, ignored otherwise.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// Fields clients may send that ask for something this server does not do: refused, never ignored.
fn refuse_unsupported(other: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let set = |k: &str| other.get(k).filter(|v| !v.is_null());
    for key in ["tools", "tool_choice", "functions", "function_call"] {
        if set(key).is_some_and(|v| v != &json!([]) && v != &json!("none")) {
            return Err(ApiError::bad_request(format!("`{key}`: tool calling is not supported")).param(key));
        }
    }
    if set("logprobs").is_some_and(|v| v != &json!(false)) || set("top_logprobs").is_some() {
        return Err(ApiError::bad_request("`logprobs` are not supported").param("logprobs"));
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if set(key).is_some_and(|v| v.as_f64() != Some(0.0)) {
            return Err(ApiError::bad_request(format!("`{key}` is not supported (only 0)")).param(key));
        }
    }
    if set("logit_bias").is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty())) {
        return Err(ApiError::bad_request("`logit_bias` is not supported").param("logit_bias"));
    }
    if set("response_format").is_some_and(|v| v.get("type") != Some(&json!("text"))) {
        return Err(
            ApiError::bad_request("`response_format` other than text is not supported").param("response_format")
        );
    }
    Ok(())
}

/// What the worker needs from one request.
pub struct Parsed {
    pub conversation: Conversation,
    pub image: Option<image::RgbImage>,
    pub sampling: nuwa::Sampling,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

/// Limits on what a request may carry.
pub struct ImagePolicy<'a> {
    pub max_image_pixels: u64,
    /// `file://` URLs are served only from under this directory.
    pub local_dir: Option<&'a Path>,
}

impl ChatRequest {
    pub fn parse(self, images: &ImagePolicy<'_>) -> Result<Parsed, ApiError> {
        refuse_unsupported(&self.other)?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("`n` other than 1 is not supported").param("n"));
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("`messages` must not be empty").param("messages"));
        }
        let mut image = None;
        let mut messages = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "{at}.role {other:?} is not supported (system, user, assistant)"
                    ))
                    .param(format!("{at}.role")))
                }
            };
            let parts = match &m.content {
                None => vec![],
                Some(Content::Text(t)) => vec![Part::Text(t.clone())],
                Some(Content::Parts(parts)) => {
                    let mut out = Vec::new();
                    for (j, p) in parts.iter().enumerate() {
                        match p {
                            ContentPart::Text { text } => out.push(Part::Text(text.clone())),
                            ContentPart::ImageUrl { image_url } => {
                                let param = format!("{at}.content[{j}].image_url.url");
                                if image.is_some() {
                                    return Err(
                                        ApiError::bad_request("only one image per request is supported").param(param)
                                    );
                                }
                                image = Some(load_image(&image_url.url, images).map_err(|e| e.param(param))?);
                                out.push(Part::Image);
                            }
                        }
                    }
                    out
                }
            };
            messages.push(Message { role, parts });
        }
        let conversation = Conversation { messages };
        conversation.validate().map_err(|e| ApiError::bad_request(e.to_string()).param("messages"))?;
        let max_tokens = self.max_completion_tokens.or(self.max_tokens).unwrap_or(256);
        if max_tokens == 0 {
            return Err(ApiError::bad_request("`max_tokens` must be at least 1").param("max_tokens"));
        }
        let sampling = nuwa::Sampling {
            temperature: self.temperature.unwrap_or(0.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or(0),
        };
        nuwa::generation::Sampler::new(&sampling).map_err(|e| {
            let field = e.field().unwrap_or("temperature");
            ApiError::bad_request(e.to_string()).param(field)
        })?;
        let stop = match self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.iter().any(String::is_empty) || stop.len() > 4 {
            return Err(ApiError::bad_request("`stop` takes up to 4 non-empty strings").param("stop"));
        }
        Ok(Parsed { conversation, image, sampling, max_tokens, stop })
    }
}

/// Decodes a `data:image/...;base64,` URL (or, when allowed, a `file://` path under the allowed
/// directory), refusing images whose header claims more than the pixel limit before decoding.
fn load_image(url: &str, policy: &ImagePolicy<'_>) -> Result<image::RgbImage, ApiError> {
    let invalid = |m: String| ApiError::bad_request(m).code("invalid_image");
    let (bytes, what) = if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) =
            rest.split_once(',').ok_or_else(|| invalid("a data URL needs a ',' before its data".into()))?;
        if !meta.starts_with("image/") || !meta.ends_with(";base64") {
            return Err(invalid(format!("data URL of type {meta:?}: expected data:image/...;base64,")));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| invalid(format!("the image's base64 data is malformed: {e}")))?;
        (bytes, "in the request".to_owned())
    } else if let Some(path) = url.strip_prefix("file://") {
        let Some(dir) = policy.local_dir else {
            return Err(invalid("file:// images are disabled (start the server with --allow-local-images DIR)".into()));
        };
        let canonical = std::fs::canonicalize(path).map_err(|e| invalid(format!("{path}: {e}")))?;
        let root = std::fs::canonicalize(dir).map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
        if !canonical.starts_with(&root) {
            return Err(invalid(format!("{path} is outside the allowed image directory")));
        }
        if !std::fs::metadata(&canonical).is_ok_and(|m| m.is_file()) {
            return Err(invalid(format!("{path} is not a regular file")));
        }
        (std::fs::read(&canonical).map_err(|e| invalid(format!("{path}: {e}")))?, path.to_owned())
    } else {
        return Err(invalid("image_url must be a data:image/...;base64, URL (remote URLs are not fetched)".into()));
    };
    nuwa::preprocess::decode_image_within(&bytes, &what, policy.max_image_pixels).map_err(|e| invalid(e.to_string()))
}

#[derive(Debug, Serialize)]
pub struct Usage {
    /// Text tokens of the prompt plus the vision tokens that entered the decoder.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Vision tokens that entered the decoder's first layer (after vision-side pruning).
    pub vision_tokens: usize,
}

/// OpenAI's finish reasons for the library's stop reasons.
pub fn finish_reason(r: nuwa::StopReason) -> &'static str {
    match r {
        nuwa::StopReason::Eos | nuwa::StopReason::Stop => "stop",
        nuwa::StopReason::Length | nuwa::StopReason::Context => "length",
        nuwa::StopReason::Cancelled => "cancelled",
    }
}
