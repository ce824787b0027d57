//! DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
//! Matters More", 2025), as its released code behaves: before decoder layer 2, pick pivot tokens by the
//! L1 norm of layer 1's keys (4 in the image, 4 in the text after it), then for each pivot keep the
//! B/8 image tokens least similar to it (cosine of the final-normed states); original positions.

use super::{schedule_steps, top_k, CutRecord, FromBudget, PositionPolicy, Pruner, Span, VisionDropper};
use crate::hooks::{Cut, DecoderProbe, TokenDropper};
use crate::layout::VisualLayout;
use crate::Result;
use candle_core::DType;

pub const LAYER: usize = 2;
const IMAGE_PIVOTS: usize = 4;
const TEXT_PIVOTS: usize = 4;

pub struct Dart {
    per_pivot: usize,
    span: Span,
    records: Vec<CutRecord>,
}

impl Dart {
    pub fn new(budget: usize, span: Span) -> Self {
        Self { per_pivot: (budget / 8).max(1), span, records: Vec::new() }
    }
}

/// The order CPython iterates `set(values)` built by inserting `values` one by one (the reference loops
/// over such a set, and the order changes which tokens it keeps). Values are small non-negative ints,
/// whose hash is the value itself.
pub fn cpython_set_order(values: &[usize]) -> Vec<usize> {
    const LINEAR_PROBES: usize = 9;
    fn insert(table: &mut [Option<usize>], v: usize) -> bool {
        let mask = table.len() - 1;
        let (mut i, mut perturb) = (v & mask, v);
        loop {
            let probes = if i + LINEAR_PROBES <= mask { LINEAR_PROBES } else { 0 };
            for slot in &mut table[i..=i + probes] {
                match *slot {
                    None => {
                        *slot = Some(v);
                        return true;
                    }
                    Some(existing) if existing == v => return false,
                    Some(_) => {}
                }
            }
            perturb >>= 5;
            i = (i * 5 + 1 + perturb) & mask;
        }
    }
    let mut table: Vec<Option<usize>> = vec![None; 8];
    let mut used = 0;
    for &v in values {
        if insert(&mut table, v) {
            used += 1;
            if used * 5 >= (table.len() - 1) * 3 {
                let mut size = 8;
                while size <= used * 4 {
                    size <<= 1;
                }
                let old = std::mem::replace(&mut table, vec![None; size]);
                for v in old.into_iter().flatten() {
                    insert(&mut table, v);
                }
            }
        }
    }
    table.into_iter().flatten().collect()
}

impl TokenDropper for Dart {
    fn cut_layers(&self) -> Vec<usize> {
        vec![LAYER]
    }

    fn cut(&mut self, probe: &dyn DecoderProbe) -> Result<Cut> {
        let seq_len = probe.positions().len();
        let slots = self.span.slots();
        let l1: Vec<f32> = probe.prev_keys()?.to_dtype(DType::F32)?.abs()?.sum(1)?.to_vec1()?;
        let image_pivots: Vec<usize> =
            top_k(&l1[slots.clone()], IMAGE_PIVOTS).into_iter().map(|i| slots.start + i).collect();
        let text_pivots: Vec<usize> = top_k(&l1[slots.end..], TEXT_PIVOTS).into_iter().map(|i| slots.end + i).collect();
        let order = cpython_set_order(&[image_pivots.clone(), text_pivots].concat());

        let unit = crate::l2_normalize_rows(&probe.final_norm()?)?;
        let mut candidates: Vec<usize> = slots.clone().filter(|s| !image_pivots.contains(s)).collect();
        let mut kept: Vec<usize> = image_pivots.clone();
        for pivot in order {
            let idx = crate::index_tensor(&candidates, unit.device())?;
            let cos = unit.index_select(&idx, 0)?.matmul(&unit.narrow(0, pivot, 1)?.t()?)?.squeeze(1)?;
            let dissimilarity: Vec<f32> = cos.neg()?.to_vec1()?;
            let picks: Vec<usize> = top_k(&dissimilarity, self.per_pivot).into_iter().map(|i| candidates[i]).collect();
            candidates.retain(|c| !picks.contains(c));
            kept.extend(picks);
        }
        let mut local: Vec<usize> = kept.into_iter().map(|s| s - slots.start).collect();
        local.sort_unstable();
        let (cut, record) = self.span.cut(LAYER, seq_len, &local, None)?;
        self.records.push(record);
        Ok(cut)
    }
}

impl VisionDropper for Dart {
    fn records(&self) -> &[CutRecord] {
        &self.records
    }
}

/// DART's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DartConfig {
    pub budget: usize,
}

impl FromBudget for DartConfig {
    fn from_budget(budget: usize, _seed: u64) -> Result<Self> {
        Ok(DartConfig { budget })
    }
}

impl Pruner for DartConfig {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn default_positions(&self) -> PositionPolicy {
        PositionPolicy::Original
    }
    fn vision_tokens_per_layer(&self, _family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        let n = layout.len();
        Ok(schedule_steps(n, &[(LAYER, (IMAGE_PIVOTS + 8 * (self.budget / 8).max(1)).min(n))], depth))
    }
    fn dropper(&self, span: Span, _depth: usize) -> Result<Option<Box<dyn VisionDropper>>> {
        Ok(Some(Box::new(Dart::new(self.budget, span))))
    }
}
