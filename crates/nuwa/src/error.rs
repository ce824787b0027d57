//! The library's error type. Every variant names what was wrong (a file, a field, a request parameter) and what was
//! expected. Parameters are named as the library spells them; front ends translate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },

    /// A configuration file is malformed or holds an unsupported value.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    /// The weights do not match what the configuration describes, or a weight file is damaged.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error(transparent)]
    Image(#[from] crate::preprocess::PreprocessError),

    /// A caller-supplied value is out of range. `field` is the parameter's name in the library's API
    /// (`budget`, `max_new_tokens`, …); front ends map it to their own spelling (a flag, a JSON key).
    #[error("`{field}` {reason}")]
    Invalid { field: &'static str, reason: String },

    /// A request this engine or model cannot serve as asked (e.g. a method needing evidence the model
    /// does not produce).
    #[error("{0}")]
    Unsupported(String),

    /// A component broke the engine's contract (e.g. a token dropper returning an invalid cut): a bug.
    #[error("internal error: {0}")]
    Internal(String),

    /// Evaluation stopped at a bad row (as asked): the message says what was kept and how to go on.
    #[error("{0}")]
    RowFailed(String),

    /// The caller cancelled the request.
    #[error("cancelled")]
    Cancelled,

    /// The prompt does not fit the model's context window.
    #[error(
        "the prompt needs {needed} positions but the model's context is {context} \
         (text_config.max_position_embeddings); shorten the prompt"
    )]
    ContextOverflow { needed: usize, context: usize },

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The request parameter an [`Error::Invalid`] is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        Error::Io { path: path.into(), msg: err.to_string() }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid { field, reason: reason.into() }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
}
