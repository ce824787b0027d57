//! SparseVLM v1.5 (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language
//! Model Inference", ICML 2025), as its maintained code behaves: text tokens that attend broadly to the
//! image are "raters"; after decoder layers 2, 6 and 15 the vision tokens the raters attend to least are
//! dropped, and the best of the dropped are recycled into a few merged tokens (DPC-kNN clusters).
//! Positions are renumbered. Clustering decisions are taken in f64 without the reference's random
//! density noise, so the result is deterministic.

use super::{pdrop, schedule_steps, sort_desc, top_k_ascending, CutRecord, FromBudget, Pruner, Span, VisionDropper};
use crate::hooks::{Cut, DecoderProbe, TokenDropper};
use crate::layout::VisualLayout;
use crate::Result;
use candle_core::{DType, Tensor};

/// Text tokens (indices after the image) whose mean attention-like affinity to the vision tokens is
/// above average: softmax over the text axis of V·Tᵀ, averaged over the vision rows.
pub fn raters(vision: &Tensor, text: &Tensor) -> Result<Vec<usize>> {
    let m = vision.to_dtype(DType::F32)?.matmul(&text.to_dtype(DType::F32)?.t()?)?;
    let r: Vec<f32> = candle_nn::ops::softmax_last_dim(&m)?.mean(0)?.to_vec1()?;
    let mean = r.iter().sum::<f32>() / r.len() as f32;
    Ok((0..r.len()).filter(|&t| r[t] > mean).collect())
}

/// DPC-kNN over the rows of `x` into `c` clusters: the centres (indices into `x`, in centre order) and
/// each row's cluster.
pub fn cluster(x: &[Vec<f32>], c: usize) -> (Vec<usize>, Vec<usize>) {
    let m = x.len();
    let scale = (x[0].len() as f64).sqrt();
    let mut dist = vec![vec![0f64; m]; m];
    for i in 0..m {
        for j in i + 1..m {
            let d = x[i].iter().zip(&x[j]).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt() / scale;
            dist[i][j] = d;
            dist[j][i] = d;
        }
    }
    let k = c.min(m);
    // Density through the mean squared distance to the k nearest (self included): denser = smaller.
    let msq: Vec<f64> = dist
        .iter()
        .map(|row| {
            let mut sq: Vec<f64> = row.iter().map(|d| d * d).collect();
            sq.sort_by(f64::total_cmp);
            sq[..k].iter().sum::<f64>() / k as f64
        })
        .collect();
    let max_d = dist.iter().flatten().copied().fold(0.0, f64::max);
    let score: Vec<f64> = (0..m)
        .map(|i| {
            let delta = (0..m).filter(|&j| msq[j] < msq[i]).map(|j| dist[i][j]).fold(f64::INFINITY, f64::min);
            let delta = if delta.is_finite() { delta } else { max_d };
            delta * (-msq[i]).exp()
        })
        .collect();
    let mut centres: Vec<usize> = (0..m).collect();
    centres.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    centres.truncate(k);
    let mut assign: Vec<usize> = (0..m)
        .map(|i| (0..k).fold(0, |best, j| if dist[centres[j]][i] < dist[centres[best]][i] { j } else { best }))
        .collect();
    for (j, &ctr) in centres.iter().enumerate() {
        assign[ctr] = j;
    }
    (centres, assign)
}

pub struct SparseVlm {
    counts: [usize; 3],
    raters: Vec<usize>,
    span: Span,
    records: Vec<CutRecord>,
}

impl SparseVlm {
    pub fn new(budget: usize, span: Span) -> Result<Self> {
        Ok(Self { counts: pdrop::schedule(budget)?, raters: Vec::new(), span, records: Vec::new() })
    }
}

impl TokenDropper for SparseVlm {
    fn cut_layers(&self) -> Vec<usize> {
        pdrop::CUT_LAYERS.to_vec()
    }

    fn start(&mut self, embeds: &Tensor) -> Result<()> {
        let slots = self.span.slots();
        let text_len = embeds.dim(0)? - slots.end;
        self.raters = raters(&embeds.narrow(0, slots.start, slots.len())?, &embeds.narrow(0, slots.end, text_len)?)?;
        Ok(())
    }

    fn attention_rows(&self, _layer: usize, _seq_len: usize) -> Vec<usize> {
        self.raters.iter().map(|&t| self.span.slots().end + t).collect()
    }

    fn cut(&mut self, probe: &dyn DecoderProbe) -> Result<Cut> {
        let seq_len = probe.positions().len();
        let stage = pdrop::CUT_LAYERS.iter().position(|&l| l == probe.layer()).expect("only our layers are cut");
        let slots = self.span.slots();
        // Score of a vision token: the raters' mean (head-averaged) attention to it.
        let rows = probe.prev_attention().expect("rater rows were asked for");
        let scores: Vec<f32> = rows.narrow(1, slots.start, slots.len())?.mean(0)?.to_vec1()?;
        let keep = top_k_ascending(&scores, self.counts[stage].min(slots.len() - 1));
        let mut pruned: Vec<usize> = (0..slots.len()).filter(|i| keep.binary_search(i).is_err()).collect();
        sort_desc(&scores, &mut pruned);
        let feed: Vec<usize> = pruned[..(pruned.len() * 3 / 10 + 1).min(pruned.len())].to_vec();
        let c = feed.len() / 10 + 1;
        let idx =
            Tensor::new(feed.iter().map(|&i| (slots.start + i) as u32).collect::<Vec<_>>(), probe.hidden().device())?;
        let x = probe.hidden().index_select(&idx, 0)?;
        let (centres, assign) = cluster(&x.to_dtype(DType::F32)?.to_vec2()?, c);
        let mut sources = vec![Vec::new(); centres.len()];
        let mut weights = vec![0f32; centres.len() * feed.len()];
        let counts: Vec<usize> = (0..centres.len()).map(|j| assign.iter().filter(|&&a| a == j).count()).collect();
        for (i, &j) in assign.iter().enumerate() {
            weights[j * feed.len() + i] = 1.0 / (counts[j] as f32 + 1e-6);
            sources[j].extend(self.span.tokens[feed[i]].iter().copied());
        }
        let weights = Tensor::from_vec(weights, (centres.len(), feed.len()), x.device())?.to_dtype(x.dtype())?;
        let merged = weights.matmul(&x)?;
        let (cut, record) = self.span.cut(probe.layer(), seq_len, &keep, Some((merged, sources)))?;
        self.records.push(record);
        Ok(cut)
    }
}

impl VisionDropper for SparseVlm {
    fn records(&self) -> &[CutRecord] {
        &self.records
    }
}

/// SparseVLM's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SparseVlmConfig {
    pub budget: usize,
}

impl FromBudget for SparseVlmConfig {
    fn from_budget(budget: usize, _seed: u64) -> Result<Self> {
        Ok(SparseVlmConfig { budget })
    }
}

impl Pruner for SparseVlmConfig {
    fn budget(&self) -> Option<usize> {
        Some(self.budget)
    }
    fn validate(&self) -> Result<()> {
        pdrop::schedule(self.budget).map(|_| ())
    }
    fn vision_tokens_per_layer(&self, _family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        // Each cut keeps its count and recycles ⌊0.3·pruned⌋ + 1 tokens into ⌊m/10⌋ + 1 merged ones.
        let n = layout.len();
        let mut n_v = n;
        let cuts: Vec<(usize, usize)> = pdrop::CUT_LAYERS
            .iter()
            .zip(pdrop::schedule(self.budget)?)
            .map(|(&layer, keep)| {
                let k = keep.min(n_v - 1);
                let m = (n_v - k) * 3 / 10 + 1;
                n_v = k + m / 10 + 1;
                (layer, n_v)
            })
            .collect();
        Ok(schedule_steps(n, &cuts, depth))
    }
    fn dropper(&self, span: Span, _depth: usize) -> Result<Option<Box<dyn VisionDropper>>> {
        Ok(Some(Box::new(SparseVlm::new(self.budget, span)?)))
    }
}
