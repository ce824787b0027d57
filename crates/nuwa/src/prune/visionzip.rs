//! VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
//! CVPR 2025): before the projector keep the [CLS] token and the patches [CLS] attends to most
//! ("dominant"), then fold the rest into a few evenly spaced "contextual" tokens by key similarity.

use super::{FromBudget, Pruner, Reduction, VisionReducer, VisionTokens};
use crate::layout::VisionEvidence;
use crate::Result;
use candle_core::{Device, Tensor};

/// Dominant (including [CLS]) and contextual counts for budget B: 54 + 10 at 64, scaled alike (108 + 20,
/// 162 + 30).
pub fn split(budget: usize) -> (usize, usize) {
    let dominant = ((budget * 54) as f64 / 64.0).round().max(1.0) as usize;
    (dominant, budget - dominant.min(budget))
}

/// The selection: which patches are dominant, which are contextual targets, and where every other
/// patch was folded.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Dominant patches (raster), ascending.
    pub dominant: Vec<usize>,
    /// Contextual targets (raster), in target order.
    pub targets: Vec<usize>,
    /// Per target, the patches merged into it (raster, ascending).
    pub members: Vec<Vec<usize>>,
}

/// Chooses the tokens from the per-patch `saliency` (summed [CLS] attention) and the head-averaged
/// patch keys `mean_keys` (N, d) of the same layer.
pub fn select(saliency: &[f32], mean_keys: &Tensor, dominant: usize, contextual: usize) -> crate::Result<Selection> {
    let n = saliency.len();
    let mut dom = super::top_k_ascending(saliency, dominant.saturating_sub(1).min(n));
    dom.sort_unstable();
    // Remaining patches in raster order; [CLS] is always dominant.
    let remaining: Vec<usize> = (0..n).filter(|p| dom.binary_search(p).is_err()).collect();
    if contextual == 0 || remaining.is_empty() {
        return Ok(Selection { dominant: dom, targets: Vec::new(), members: Vec::new() });
    }
    let step = (remaining.len() / contextual).max(1);
    let target_pos: Vec<usize> = (0..remaining.len()).step_by(step).take(contextual).collect();
    let targets: Vec<usize> = target_pos.iter().map(|&i| remaining[i]).collect();
    let others: Vec<usize> = (0..remaining.len()).filter(|i| !target_pos.contains(i)).map(|i| remaining[i]).collect();

    let rows = |patches: &[usize]| -> crate::Result<Tensor> {
        let k = mean_keys.index_select(&crate::index_tensor(patches, mean_keys.device())?, 0)?;
        Ok(crate::l2_normalize_rows(&k)?)
    };
    let mut members = vec![Vec::new(); targets.len()];
    if !others.is_empty() {
        let sim = rows(&others)?.matmul(&rows(&targets)?.t()?)?.to_vec2::<f32>()?;
        for (row, &p) in sim.iter().zip(&others) {
            let best = row.iter().enumerate().fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
            members[best].push(p);
        }
    }
    Ok(Selection { dominant: dom, targets, members })
}

/// The output tokens `[CLS, dominant ↑, contextual]` from the projector-input features `x` (N, D) and
/// the [CLS] row `cls` (1, D); a contextual token is its target plus the mean of its members. Also the
/// patches each token stands for ([CLS]: none).
pub fn tokens(sel: &Selection, x: &Tensor, cls: &Tensor) -> crate::Result<(Tensor, Vec<Vec<usize>>)> {
    let n = x.dim(0)?;
    let rows = 1 + sel.dominant.len() + sel.targets.len();
    let mut w = vec![0f32; rows * n];
    for (i, &p) in sel.dominant.iter().enumerate() {
        w[(1 + i) * n + p] = 1.0;
    }
    let base = 1 + sel.dominant.len();
    for (j, (&t, m)) in sel.targets.iter().zip(&sel.members).enumerate() {
        w[(base + j) * n + t] = 1.0;
        for &p in m {
            w[(base + j) * n + p] += 1.0 / m.len() as f32;
        }
    }
    let w = Tensor::from_vec(w, (rows, n), &Device::Cpu)?.to_device(x.device())?.to_dtype(x.dtype())?;
    let patches = w.narrow(0, 1, rows - 1)?.matmul(x)?;
    let out = Tensor::cat(&[cls, &patches], 0)?;
    let mut sources = vec![Vec::new()];
    sources.extend(sel.dominant.iter().map(|&p| vec![p]));
    sources.extend(
        sel.targets.iter().zip(&sel.members).map(|(&t, m)| std::iter::once(t).chain(m.iter().copied()).collect()),
    );
    Ok((out, sources))
}

/// VisionZip's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VisionZip {
    pub budget: usize,
}

impl FromBudget for VisionZip {
    fn from_budget(budget: usize, _seed: u64) -> Result<Self> {
        Ok(VisionZip { budget })
    }
}

impl Pruner for VisionZip {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn reducer(&self) -> Option<&dyn VisionReducer> {
        Some(self)
    }
}

impl VisionReducer for VisionZip {
    fn reduce(&self, ev: &VisionEvidence, _embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction> {
        // Defined on one view's patch grid; its per-view LLaVA-NeXT path is not implemented here.
        ev.layout.raster_grid()?;
        let (dominant, contextual) = split(self.budget);
        let sel = select(&ev.saliency()?.summed, ev.keys()?, dominant, contextual)?;
        let (features, sources) = tokens(&sel, &ev.features, ev.summary()?)?;
        Ok(Reduction { tokens: VisionTokens::Features(features), sources, pillars: vec![] })
    }
}
