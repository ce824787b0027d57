//! Random selection (Nüwa's appendix B.3 baseline) and a fixed, user-given selection. The reference's
//! torch generator is not reproducible off its GPU, so the indices come from our own seeded generator.

use super::{FromBudget, Pruner, Reduction, VisionReducer};
use crate::layout::{VisionEvidence, VisualLayout};
use crate::{Error, Result};
use candle_core::Tensor;

/// `k` distinct indices out of `0..n`, ascending, uniform, decided by `seed` alone.
pub fn indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    use rand::{seq::index::sample, SeedableRng};
    let mut chosen = sample(&mut rand::rngs::StdRng::seed_from_u64(seed), n, k.min(n)).into_vec();
    chosen.sort_unstable();
    chosen
}

/// A user's list of patches to keep, checked against a grid of `n` patches and put in raster order.
pub fn manual(keep: &[usize], n: usize) -> Result<Vec<usize>> {
    let mut sorted = keep.to_vec();
    sorted.sort_unstable();
    if let Some(&bad) = sorted.iter().find(|&&i| i >= n) {
        return Err(Error::invalid("keep", format!("lists patch index {bad}, outside the {n}-patch grid")));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid("keep", format!("lists patch index {} twice", w[0])));
    }
    if sorted.is_empty() {
        return Err(Error::invalid("keep", "is empty: list at least one patch to keep"));
    }
    Ok(sorted)
}

/// Random selection's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Random {
    pub budget: usize,
    pub seed: u64,
}

impl FromBudget for Random {
    fn from_budget(budget: usize, seed: u64) -> Result<Self> {
        Ok(Random { budget, seed })
    }
}

impl Pruner for Random {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn reducer(&self) -> Option<&dyn VisionReducer> {
        Some(self)
    }
}

impl VisionReducer for Random {
    fn reduce(&self, ev: &VisionEvidence, _embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction> {
        Reduction::gather(ev, indices(ev.layout.len(), self.budget, self.seed))
    }
}

/// A given list of slots to keep.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Manual {
    pub keep: Vec<usize>,
}

impl FromBudget for Manual {
    fn from_budget(_budget: usize, _seed: u64) -> Result<Self> {
        Err(Error::invalid("keep", "is required by the manual method (a list of patch indices)"))
    }
}

impl Pruner for Manual {
    fn budget(&self) -> Option<usize> {
        None
    }
    fn vision_tokens_per_layer(&self, _family: &str, _layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        Ok(vec![self.keep.len(); depth])
    }
    fn reducer(&self) -> Option<&dyn VisionReducer> {
        Some(self)
    }
}

impl VisionReducer for Manual {
    fn reduce(&self, ev: &VisionEvidence, _embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction> {
        Reduction::gather(ev, manual(&self.keep, ev.layout.len())?)
    }
}
