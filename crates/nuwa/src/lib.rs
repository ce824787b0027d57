//! nuwa: vision-language-model inference with spatially faithful visual-token pruning.
//!
//! Load a hub checkpoint with [`Engine::load`] (the model family is detected from its `config.json`),
//! describe a request with [`GenerateRequest`] (the pruning method is [`prune::Method`]), and call
//! [`Engine::generate`] — or [`Engine::prefill`] and step a [`Session`] token by token.

pub mod bench;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod ground;
pub mod hooks;
pub mod layout;
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

/// Rows of `x` scaled to unit L2 norm, in f32. A zero row stays zero instead of becoming NaN; any other
/// row gets exactly the bits of dividing by its norm.
pub(crate) fn l2_normalize_rows(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    let x = x.to_dtype(candle_core::DType::F32)?;
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-8f32, f32::INFINITY)?;
    x.broadcast_div(&norms)
}

/// FNV-1a, 64 bits: the same on every machine and release (the standard library's hasher may change),
/// for seeding and for noticing changed data; not for resisting an adversary.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn feed(self, bytes: &[u8]) -> Self {
        Self(bytes.iter().fold(self.0, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)))
    }

    pub fn of(bytes: &[u8]) -> u64 {
        Self::default().feed(bytes).0
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

pub use engine::{
    Engine, GenerateRequest, Generation, ImageInput, LoadOptions, Session, SessionOptions, StopReason, VisionReport,
};
pub use error::{Error, Result};
pub use generation::Sampling;
pub use prune::{nuwa::NuwaConfig, Method};

/// The README's Rust examples compile as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// Lets the allocator keep freed buffers for the next operation instead of handing them back to the
/// kernel. glibc maps every block over 128 KiB afresh by default, and faulting in and zeroing those pages
/// again for every activation costs a noticeable share of a forward pass. Call once at startup (the `nuwa`
/// binary does); elsewhere it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; blocks up to glibc's 32 MiB maximum then
    // come from the heap, which is not trimmed below 1 GiB of free space.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
