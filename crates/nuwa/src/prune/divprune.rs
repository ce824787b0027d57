//! DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning", CVPR 2025): at the decoder's
//! input, greedily pick the projected tokens that are most different from those already picked
//! (max–min cosine distance); contiguous positions.

use super::{FromBudget, Pruner, Reduction, VisionReducer, VisionTokens};
use crate::generation::argmax;
use crate::layout::VisionEvidence;
use crate::Result;
use candle_core::Tensor;

/// Picks `k` of the rows of `v` (N, D), returning them in the order they were chosen.
pub fn select(v: &Tensor, k: usize) -> crate::Result<Vec<usize>> {
    let unit = crate::l2_normalize_rows(v)?;
    let dist = (1.0 - unit.matmul(&unit.t()?)?)?.to_vec2::<f32>()?;
    let n = dist.len();
    let k = k.min(n);
    // Step 0: the token whose nearest other token is farthest (second-smallest of its column; the
    // smallest is itself).
    let second_smallest = |j: usize| {
        let (mut a, mut b) = (f32::INFINITY, f32::INFINITY);
        for row in &dist {
            let d = row[j];
            if d < a {
                b = a;
                a = d;
            } else if d < b {
                b = d;
            }
        }
        b
    };
    let first = argmax(&(0..n).map(second_smallest).collect::<Vec<_>>()) as usize;
    let mut order = vec![first];
    // Distance of each token to the nearest chosen one.
    let mut nearest: Vec<f32> = dist[first].clone();
    while order.len() < k {
        let next = argmax(&nearest) as usize;
        order.push(next);
        for (m, &d) in nearest.iter_mut().zip(&dist[next]) {
            *m = m.min(d);
        }
    }
    Ok(order)
}

/// DivPrune's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DivPrune {
    pub budget: usize,
}

impl FromBudget for DivPrune {
    fn from_budget(budget: usize, _seed: u64) -> Result<Self> {
        Ok(DivPrune { budget })
    }
}

impl Pruner for DivPrune {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn reducer(&self) -> Option<&dyn VisionReducer> {
        Some(self)
    }
}

impl VisionReducer for DivPrune {
    fn reduce(&self, _ev: &VisionEvidence, embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction> {
        let all = embedded()?;
        let mut kept = select(&all, self.budget)?;
        kept.sort_unstable();
        let idx = crate::index_tensor(&kept, all.device())?;
        Ok(Reduction {
            tokens: VisionTokens::Projected(all.index_select(&idx, 0)?),
            sources: super::singletons(&kept),
            pillars: vec![],
        })
    }
}
