//! VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token
//! Pruning in VLMs", ICCV 2025): before the projector keep half the budget by [CLS] attention
//! ("important") and fill the rest with diverse tokens, repeatedly dropping the tokens most similar to
//! another. Decisions are taken in f64: in f32 near-duplicate patches make the choice fragile.

use super::{FromBudget, Pruner, Reduction, VisionReducer};
use crate::layout::VisionEvidence;
use candle_core::{DType, Tensor};

/// Kept patches (raster, ascending) and the important ones, for budget B from the per-patch [CLS]
/// attention (head mean) `attn` and features `x` (N rows of D).
pub fn select(attn: &[f32], x: &[Vec<f32>], budget: usize, important_ratio: f64) -> (Vec<usize>, Vec<usize>) {
    let n = attn.len();
    let budget = budget.min(n);
    let n_important = (budget as f64 * important_ratio) as usize;
    let n_diverse = budget - n_important;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| (attn[b] as f64).total_cmp(&(attn[a] as f64)).then(a.cmp(&b)));
    let important = order[..n_important].to_vec();
    let mut residual = order[n_important..].to_vec();

    let unit: Vec<Vec<f64>> = x
        .iter()
        .map(|r| {
            // A zero row stays zero (no NaN), as in [`crate::l2_normalize_rows`].
            let norm = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(1e-8);
            r.iter().map(|&v| v as f64 / norm).collect()
        })
        .collect();
    let cos = |a: usize, b: usize| unit[a].iter().zip(&unit[b]).map(|(u, v)| u * v).sum::<f64>();
    // Halve-and-compare rounds, at most 8 drops each, until the residual fits its share.
    loop {
        let drop = 8.min(residual.len().saturating_sub(n_diverse));
        if drop == 0 {
            break;
        }
        let (a, b): (Vec<usize>, Vec<usize>) =
            (residual.iter().step_by(2).copied().collect(), residual.iter().skip(1).step_by(2).copied().collect());
        let score: Vec<f64> =
            a.iter().map(|&i| b.iter().map(|&j| cos(i, j)).fold(f64::NEG_INFINITY, f64::max)).collect();
        let mut rank: Vec<usize> = (0..a.len()).collect();
        rank.sort_by(|&p, &q| score[q].total_cmp(&score[p]).then(p.cmp(&q)));
        // As Python's `rank[drop:]`: with fewer candidates than drops, all of them go.
        residual = rank[drop.min(a.len())..].iter().map(|&k| a[k]).chain(b).collect();
    }
    let mut kept: Vec<usize> = important.iter().chain(&residual).copied().collect();
    kept.sort_unstable();
    let mut important = important;
    important.sort_unstable();
    (kept, important)
}

/// VisPruner's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VisPruner {
    pub budget: usize,
}

impl FromBudget for VisPruner {
    fn from_budget(budget: usize, _seed: u64) -> crate::Result<Self> {
        Ok(VisPruner { budget })
    }
}

impl Pruner for VisPruner {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn reducer(&self) -> Option<&dyn VisionReducer> {
        Some(self)
    }
}

impl VisionReducer for VisPruner {
    fn reduce(&self, ev: &VisionEvidence, _embedded: &dyn Fn() -> crate::Result<Tensor>) -> crate::Result<Reduction> {
        // Defined on one view's patch grid; its per-view LLaVA-NeXT path is not implemented here.
        ev.layout.raster_grid()?;
        // "Important" means attended by the [CLS] token: a tower without one (Qwen2.5-VL's) has no such
        // saliency, only attention column sums, which are not what VisPruner ranks by.
        ev.summary()?;
        let attn = ev.saliency()?.mean();
        let rows = ev.features.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Reduction::gather(ev, select(&attn, &rows, self.budget, 0.5).0)
    }
}
