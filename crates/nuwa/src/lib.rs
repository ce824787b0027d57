//! nuwa: LLaVA inference with spatially faithful visual-token pruning.
//!
//! Load a llava-hf checkpoint with [`Engine::load`], describe a request with [`GenerateRequest`] (the
//! pruning method is [`prune::Method`]), and call [`Engine::generate`].

pub mod bench;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generation;
pub mod hooks;
pub mod ground;
pub mod models;
pub mod overlay;
pub mod preprocess;
pub mod prompt;
pub mod prune;
pub mod score;

pub use engine::{Engine, GenerateRequest, Generation, ImageInput, LoadOptions, VisionReport};
pub use error::{Error, Result};
pub use generation::Sampling;
pub use prune::{nuwa::NuwaConfig, Method};

/// The README's Rust examples compile as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
