//! Average pooling (Nüwa's appendix B.3, Algorithm 2): the patch grid pooled to about B cells with
//! adaptive average pooling, before the projector.

use super::{FromBudget, Pruner, Reduction, VisionReducer, VisionTokens};
use crate::layout::{VisionEvidence, VisualLayout};
use crate::Result;
use candle_core::{Device, Tensor};

/// Output grid for budget B on an `h`×`w` grid: W' = round(√(B/α)), H' = round(α·W'), α = h/w
/// (Python's round: half to even).
pub fn output_grid(budget: usize, h: usize, w: usize) -> (usize, usize) {
    let alpha = h as f64 / w as f64;
    let w_out = ((budget as f64 / alpha).sqrt().round_ties_even() as usize).clamp(1, w);
    let h_out = ((alpha * w_out as f64).round_ties_even() as usize).clamp(1, h);
    (h_out, w_out)
}

/// Patches of each output cell, row-major: rows [⌊h·i/H'⌋, ⌈h·(i+1)/H'⌉) × columns likewise (windows
/// may overlap, as torch's adaptive pooling does).
pub fn windows(h: usize, w: usize, h_out: usize, w_out: usize) -> Vec<Vec<usize>> {
    let bins = |n: usize, out: usize| -> Vec<(usize, usize)> {
        (0..out).map(|i| (n * i / out, (n * (i + 1)).div_ceil(out))).collect()
    };
    let (rows, cols) = (bins(h, h_out), bins(w, w_out));
    let mut cells = Vec::with_capacity(h_out * w_out);
    for &(r0, r1) in &rows {
        for &(c0, c1) in &cols {
            cells.push((r0..r1).flat_map(|r| (c0..c1).map(move |c| r * w + c)).collect());
        }
    }
    cells
}

/// The mean of each window's features: (cells, D) from `x` (N, D).
pub fn pool(x: &Tensor, cells: &[Vec<usize>]) -> crate::Result<Tensor> {
    let n = x.dim(0)?;
    let mut weights = vec![0f32; cells.len() * n];
    for (i, cell) in cells.iter().enumerate() {
        for &p in cell {
            weights[i * n + p] = 1.0 / cell.len() as f32;
        }
    }
    let weights =
        Tensor::from_vec(weights, (cells.len(), n), &Device::Cpu)?.to_device(x.device())?.to_dtype(x.dtype())?;
    Ok(weights.matmul(x)?)
}

/// Pooling's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pool {
    pub budget: usize,
}

impl FromBudget for Pool {
    fn from_budget(budget: usize, _seed: u64) -> Result<Self> {
        Ok(Pool { budget })
    }
}

impl Pruner for Pool {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn vision_tokens_per_layer(&self, _family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        let (h, w) = layout.raster_grid()?;
        let (ho, wo) = output_grid(self.budget, h, w);
        Ok(vec![ho * wo; depth])
    }
    fn reducer(&self) -> Option<&dyn VisionReducer> {
        Some(self)
    }
}

impl VisionReducer for Pool {
    fn reduce(&self, ev: &VisionEvidence, _embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction> {
        let (h, w) = ev.layout.raster_grid()?;
        let (ho, wo) = output_grid(self.budget, h, w);
        let cells = windows(h, w, ho, wo);
        Ok(Reduction { tokens: VisionTokens::Features(pool(&ev.features, &cells)?), sources: cells, pillars: vec![] })
    }
}
