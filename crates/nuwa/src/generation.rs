//! Choosing the next token: greedy by default, or temperature with nucleus (top-p) sampling from a
//! seeded generator so a run can be repeated exactly.

use crate::{Error, Result};
use candle_core::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

pub struct Sampler {
    cfg: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(cfg: &Sampling) -> Result<Self> {
        if !(cfg.temperature >= 0.0 && cfg.temperature.is_finite()) {
            return Err(Error::invalid("temperature", format!("must be ≥ 0, got {}", cfg.temperature)));
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return Err(Error::invalid("top_p", format!("must be within (0, 1], got {}", cfg.top_p)));
        }
        Ok(Self { cfg: cfg.clone(), rng: StdRng::seed_from_u64(cfg.seed) })
    }

    /// Picks a token from last-position logits (vocab,).
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::Unsupported(format!(
                "the model produced a non-finite logit ({} for token {i}): its weights or inputs hold NaN or \
                 infinity, or the dtype overflowed (try f32)",
                logits[i]
            )));
        }
        if self.cfg.temperature == 0.0 {
            return Ok(argmax(&logits));
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let t = self.cfg.temperature as f32;
        let mut probs: Vec<(usize, f32)> = logits.iter().map(|&l| ((l - max) / t).exp()).enumerate().collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f32 = probs.iter().map(|p| p.1).sum();
        // The smallest prefix whose mass reaches top_p.
        let mut mass = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p.1 / total;
            if mass >= self.cfg.top_p as f32 {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let kept: f32 = probs.iter().map(|p| p.1).sum();
        let mut r = self.rng.random::<f32>() * kept;
        for &(i, p) in &probs {
            r -= p;
            if r <= 0.0 {
                return Ok(i as u32);
            }
        }
        Ok(probs.last().map_or(0, |p| p.0 as u32))
    }
}

/// Index of the largest value; the first one on ties, as torch.argmax.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}
