//! The library's error type. Every variant names what was wrong (a file, a field, a flag) and what was
//! expected, so the binary can print it as is.

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

    /// A caller-supplied value is out of range (a budget, a quantile, a layer, a token count, …).
    #[error("{0}")]
    InvalidArgument(String),

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
    pub(crate) fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        Error::Io { path: path.into(), msg: err.to_string() }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
}
