//! PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid
//! Visual Redundancy Reduction", CVPR 2025): at the end of each stage, rank the vision tokens by the
//! attention the last prompt token would pay them in the next layer (its own q/k on the current input,
//! head mean) and keep the top ones; the sequence is renumbered after every drop.

use super::{schedule_steps, top_k_ascending, CutRecord, FromBudget, Pruner, Span, VisionDropper};
use crate::hooks::{Cut, DecoderProbe, TokenDropper};
use crate::layout::VisualLayout;
use crate::{Error, Result};

/// The layers the stages end before (after layer indices 2, 6, 15), as SparseVLM v1.5 and Nüwa's table use.
pub const CUT_LAYERS: [usize; 3] = [3, 7, 16];

/// Vision tokens kept at each stage boundary for budget B (SparseVLM v1.5's published counts, which
/// Nüwa's comparison uses for PDrop too).
pub fn schedule(budget: usize) -> Result<[usize; 3]> {
    match budget {
        64 => Ok([66, 30, 17]),
        96 => Ok([238, 48, 26]),
        128 => Ok([303, 110, 36]),
        192 => Ok([300, 200, 110]),
        other => Err(Error::invalid(
            "budget",
            format!("{other}: PyramidDrop/SparseVLM schedules are published for 64, 96, 128 and 192 only"),
        )),
    }
}

pub struct PyramidDrop {
    counts: [usize; 3],
    span: Span,
    records: Vec<CutRecord>,
}

impl PyramidDrop {
    pub fn new(budget: usize, span: Span) -> Result<Self> {
        Ok(Self { counts: schedule(budget)?, span, records: Vec::new() })
    }
}

impl TokenDropper for PyramidDrop {
    fn cut_layers(&self) -> Vec<usize> {
        CUT_LAYERS.to_vec()
    }

    fn cut(&mut self, probe: &dyn DecoderProbe) -> Result<Cut> {
        let seq_len = probe.positions().len();
        let stage = CUT_LAYERS.iter().position(|&l| l == probe.layer()).expect("only our layers are cut");
        let row = probe.preview_attention(&[seq_len - 1])?.squeeze(0)?.to_vec1::<f32>()?;
        let keep = top_k_ascending(&row[self.span.slots()], self.counts[stage].min(self.span.len()));
        let (cut, record) = self.span.cut(probe.layer(), seq_len, &keep, None)?;
        self.records.push(record);
        Ok(cut)
    }
}

impl VisionDropper for PyramidDrop {
    fn records(&self) -> &[CutRecord] {
        &self.records
    }
}

/// PyramidDrop's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PDrop {
    pub budget: usize,
}

impl FromBudget for PDrop {
    fn from_budget(budget: usize, _seed: u64) -> Result<Self> {
        Ok(PDrop { budget })
    }
}

impl Pruner for PDrop {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn validate(&self) -> Result<()> {
        schedule(self.budget).map(|_| ())
    }
    fn vision_tokens_per_layer(&self, _family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        let cuts: Vec<(usize, usize)> = CUT_LAYERS.iter().copied().zip(schedule(self.budget)?).collect();
        Ok(schedule_steps(layout.len(), &cuts, depth))
    }
    fn dropper(&self, span: Span, _depth: usize) -> Result<Option<Box<dyn VisionDropper>>> {
        Ok(Some(Box::new(PyramidDrop::new(self.budget, span)?)))
    }
}
