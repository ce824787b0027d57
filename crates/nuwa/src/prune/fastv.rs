//! FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024), as its released
//! KV-cache variant behaves: once, before decoder layer K = 2, keep the R vision tokens the last prompt
//! token attends to most in layer K − 1 (head mean); original positions.
//!
//! The same single-cut family also runs a seeded random choice or a fixed list (Nüwa's appendix B.3).

use super::{schedule_steps, top_k_ascending, CutRecord, FromBudget, PositionPolicy, Pruner, Span, VisionDropper};
use crate::hooks::{Cut, DecoderProbe, TokenDropper};
use crate::layout::VisualLayout;
use crate::Result;

/// The layer FastV cuts before.
pub const LAYER: usize = 2;

/// How a budget B maps to the kept count R.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Count {
    /// B is the mean over layers: (K·N + (L − K)·R) / L = B (how Nüwa, SparseVLM and VisionZip count).
    #[default]
    Average,
    /// B is what survives the cut (how DART and CDPruner count).
    Kept,
}

/// R for budget B on `n` patches and a `depth`-layer decoder.
pub fn keep_count(budget: usize, count: Count, n: usize, depth: usize) -> usize {
    let r = match count {
        Count::Kept => budget as f64,
        Count::Average => (depth * budget) as f64 - (LAYER * n) as f64,
    };
    let r = if count == Count::Average { r / (depth - LAYER) as f64 } else { r };
    (r.round().max(1.0) as usize).min(n)
}

/// Which vision tokens survive the cut.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// FastV: the last prompt token's attention in the layer before.
    Attention,
    /// A seeded uniform subset.
    Random { seed: u64 },
    /// These span indices (raster order for an unpruned image).
    Fixed(Vec<usize>),
}

pub struct SingleCut {
    layer: usize,
    keep: usize,
    selection: Selection,
    span: Span,
    records: Vec<CutRecord>,
}

impl SingleCut {
    pub fn new(layer: usize, keep: usize, selection: Selection, span: Span) -> Self {
        Self { layer, keep, selection, span, records: Vec::new() }
    }
}

impl TokenDropper for SingleCut {
    fn cut_layers(&self) -> Vec<usize> {
        vec![self.layer]
    }

    fn cut(&mut self, probe: &dyn DecoderProbe) -> Result<Cut> {
        let seq_len = probe.positions().len();
        let chosen = match &self.selection {
            Selection::Attention => {
                let row =
                    probe.prev_attention().expect("the last row is always handed over").squeeze(0)?.to_vec1::<f32>()?;
                top_k_ascending(&row[self.span.slots()], self.keep)
            }
            Selection::Random { seed } => super::random::indices(self.span.len(), self.keep, *seed),
            Selection::Fixed(list) => list.clone(),
        };
        let (cut, record) = self.span.cut(self.layer, seq_len, &chosen, None)?;
        self.records.push(record);
        Ok(cut)
    }
}

impl VisionDropper for SingleCut {
    fn records(&self) -> &[CutRecord] {
        &self.records
    }
}

/// FastV's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FastV {
    pub budget: usize,
    pub count: Count,
}

impl FromBudget for FastV {
    fn from_budget(budget: usize, _seed: u64) -> Result<Self> {
        Ok(FastV { budget, count: Count::Average })
    }
}

impl Pruner for FastV {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn default_positions(&self) -> PositionPolicy {
        PositionPolicy::Original
    }
    fn vision_tokens_per_layer(&self, _family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        let n = layout.len();
        Ok(schedule_steps(n, &[(LAYER, keep_count(self.budget, self.count, n, depth))], depth))
    }
    fn dropper(&self, span: Span, depth: usize) -> Result<Option<Box<dyn VisionDropper>>> {
        let keep = keep_count(self.budget, self.count, span.n_slots(), depth);
        Ok(Some(Box::new(SingleCut::new(LAYER, keep, Selection::Attention, span))))
    }
}
