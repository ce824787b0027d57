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

/// `idx` as a u32 tensor on `dev`, for `index_select`.
pub(crate) fn index_tensor(idx: &[usize], dev: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
    candle_core::Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), dev)
}

pub use engine::{Engine, GenerateRequest, Generation, ImageInput, LoadOptions, VisionReport};
pub use error::{Error, Result};
pub use generation::Sampling;
pub use prune::{nuwa::NuwaConfig, Method};

/// The README's Rust examples compile as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
