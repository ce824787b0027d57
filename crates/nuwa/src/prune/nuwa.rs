//! Nüwa (Huang et al., "Nüwa: Mending the Spatial Integrity Torn by VLM Token Pruning", ICLR 2026).
//!
//! Stage 1, after the vision encoder: anchors spread over the patch grid (top-n per 2×2 cell, then the
//! global top-K1 by [CLS] saliency), the most salient anchors ("pillars") kept as they are and the others
//! ("collectors") folding in similar nearby patches. Stage 2, halfway up the decoder: keep the K2 vision
//! tokens the last prompt token attends to most. Tokens keep their original positions (the pipeline's job).
//! Where the paper and the released code differ, this follows the released code (see SPEC-nuwa.md).
//!
//! On an anyres layout (LLaVA-NeXT: a base view's grid and a grid stitched from crops, rows closed by
//! newline tokens) the two grids are pruned independently with the stage-1 budget split over the views,
//! every row keeps its newline, and stage 2 keeps a tenth of the vision tokens (SPEC-llava-next §6–7).

use super::{
    schedule_steps, singletons, sort_desc, top_k_ascending, CutRecord, FromBudget, PositionPolicy, Pruner, Reduction,
    Span, VisionDropper, VisionReducer, VisionTokens,
};
use crate::hooks::{Cut, DecoderProbe, TokenDropper};
use crate::index_tensor;
use crate::layout::{Needs, VisionEvidence, VisualLayout};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Which stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stages {
    #[default]
    Both,
    /// Stage 1 only: K1 = B, no cut in the decoder.
    #[serde(rename = "1")]
    One,
    /// Stage 2 only: every patch enters the decoder, K2 = B survive the cut.
    #[serde(rename = "2")]
    Two,
}

/// How stage 2 ranks the vision tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage2Rule {
    /// The last prompt token's attention in the layer before the cut, averaged over heads.
    #[default]
    Attention,
    /// A seeded random subset (an ablation).
    Random,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NuwaConfig {
    /// Mean number of vision tokens over the decoder's layers.
    pub budget: usize,
    pub stages: Stages,
    /// Squared radius of the similarity fall-off, in patches².
    pub distance: f64,
    /// `None`: the layout's default ([`DEFAULT_PILLAR_QUANTILE`], [`ANYRES_PILLAR_QUANTILE`]).
    pub pillar_quantile: Option<f64>,
    /// 2×2 cell grouping before the global top-K1 (off = the "no region" ablation).
    pub cells: bool,
    /// Decoder layer before which stage 2 cuts; `None` = half the depth.
    pub stage2_layer: Option<usize>,
    pub stage2_rule: Stage2Rule,
    pub seed: u64,
    /// A keep ratio instead of a token budget (`--budget 25%`); on Qwen2.5-VL the only way to set Nüwa.
    pub keep: Option<Keep>,
    /// The released code's behaviour where it differs (Qwen2.5-VL: similarity features left in window
    /// order, the stage-2 layer attending without the causal mask at prefill); nothing on LLaVA.
    pub as_released: bool,
}

/// A keep ratio: one of the published presets, or the stage ratios and top-n spelled out.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Keep {
    Ratio(f64),
    Explicit(KeepRatios),
}

/// Stage-1 ratio r1 (K1 = ⌈N·r1⌉), stage-2 ratio r2 (K2 = ⌊K1·r2⌋) and candidates per 2×2 cell.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KeepRatios {
    pub stage1: f64,
    pub stage2: f64,
    pub top_n: usize,
}

/// The released Qwen2.5-VL settings: keep ratio → (r1, r2, top-n) (SPEC-qwen2.5-vl §7.1).
pub const QWEN_PRESETS: [(f64, KeepRatios); 3] = [
    (0.25, KeepRatios { stage1: 0.35, stage2: 0.42, top_n: 3 }),
    (0.50, KeepRatios { stage1: 0.60, stage2: 0.66, top_n: 3 }),
    (0.75, KeepRatios { stage1: 0.85, stage2: 0.70, top_n: 4 }),
];

/// The family whose Nüwa works on merged tokens with keep ratios (SPEC-qwen2.5-vl §7).
pub const MERGED_GRID_FAMILY: &str = "qwen2.5-vl";
/// Pillar quantile of the released Qwen code.
pub const MERGED_PILLAR_QUANTILE: f64 = 0.1;
/// The similarity fall-off radius on merged grids, as a fraction of the padded grid's diagonal.
pub const MERGED_DISTANCE_FRACTION: f64 = 0.8;

impl Keep {
    /// The stage ratios: spelled out, or the preset for the ratio (refused when there is none).
    pub fn ratios(&self) -> Result<KeepRatios> {
        match *self {
            Keep::Explicit(r) => Ok(r),
            Keep::Ratio(k) => {
                QWEN_PRESETS.iter().find(|(p, _)| (p - k).abs() < 1e-9).map(|&(_, r)| r).ok_or_else(|| {
                    Error::invalid(
                        "budget",
                        format!(
                            "keep ratio {}% has no published Nüwa setting (25%, 50%, 75%); give the stage-1 ratio, \
                         stage-2 ratio and top-n instead",
                            k * 100.0
                        ),
                    )
                })
            }
        }
    }

    /// Stage-1 anchors K1 = min(⌈N·r1⌉ (in f64, as released), top-n · cells) for `n` tokens in `cells` cells.
    pub fn k1(r: &KeepRatios, n: usize, cells: usize) -> usize {
        ((n as f64 * r.stage1).ceil() as usize).min(r.top_n * cells).max(1)
    }

    /// Stage-2 survivors K2 = max(1, ⌊K1·r2⌋) (in f64, truncated); `None` when that cuts nothing.
    pub fn k2(r: &KeepRatios, k1: usize) -> Option<usize> {
        let k2 = ((k1 as f64 * r.stage2) as usize).max(1);
        (k2 < k1 && k1 > 1).then_some(k2)
    }
}

impl Default for NuwaConfig {
    fn default() -> Self {
        Self {
            budget: 128,
            stages: Stages::Both,
            distance: 280.0,
            pillar_quantile: None,
            cells: true,
            stage2_layer: None,
            stage2_rule: Stage2Rule::Attention,
            seed: 0,
            keep: None,
            as_released: false,
        }
    }
}

impl NuwaConfig {
    /// Rejects values no model could run with; layer bounds are checked against the model later.
    pub fn validate(&self) -> Result<()> {
        if self.budget == 0 {
            return Err(Error::invalid("budget", "must be at least 1 vision token"));
        }
        if !(self.distance > 0.0 && self.distance.is_finite()) {
            return Err(Error::invalid(
                "distance",
                format!("must be a positive number of patches², got {}", self.distance),
            ));
        }
        if let Some(q) = self.pillar_quantile.filter(|q| !(0.0..=1.0).contains(q)) {
            return Err(Error::invalid("pillar_quantile", format!("must be within [0, 1], got {q}")));
        }
        match self.keep {
            Some(Keep::Ratio(k)) if !(k > 0.0 && k <= 1.0) => {
                return Err(Error::invalid(
                    "budget",
                    format!("a keep ratio must be within (0 %, 100 %], got {}%", k * 100.0),
                ))
            }
            Some(Keep::Explicit(r)) => {
                for (field, v) in [("stage1_ratio", r.stage1), ("stage2_ratio", r.stage2)] {
                    if !(v > 0.0 && v <= 1.0) {
                        return Err(Error::invalid(field, format!("must be within (0, 1], got {v}")));
                    }
                }
                if !(1..=4).contains(&r.top_n) {
                    return Err(Error::invalid("top_n", format!("must be 1…4 (a 2×2 cell), got {}", r.top_n)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The token budget on a layout of `n` slots: a keep ratio's share of them, else the budget.
    pub fn budget_on(&self, n: usize) -> usize {
        match self.keep {
            Some(Keep::Ratio(k)) => ((k * n as f64).round() as usize).max(1),
            _ => self.budget,
        }
    }

    /// The stage ratios on the merged-grid family: the keep ratio's, or the 50 % preset when only the
    /// default token budget is set; a token budget of its own is refused (this family has none).
    pub fn merged_ratios(&self) -> Result<KeepRatios> {
        match &self.keep {
            Some(k) => k.ratios(),
            None if self.budget == NuwaConfig::default().budget => Keep::Ratio(0.5).ratios(),
            None => Err(Error::invalid(
                "budget",
                format!(
                    "{} tokens: Nüwa on {MERGED_GRID_FAMILY} is set by a keep ratio (25%, 50% or 75%, or the \
                     stage-1 ratio, stage-2 ratio and top-n)",
                    self.budget
                ),
            )),
        }
    }

    /// The pillar quantile on `layout`: the one asked for, else the layout's default.
    pub fn pillar_quantile_on(&self, layout: &VisualLayout) -> f64 {
        let default = if layout.anyres().is_some() { ANYRES_PILLAR_QUANTILE } else { DEFAULT_PILLAR_QUANTILE };
        self.pillar_quantile.unwrap_or(default)
    }

    /// The stage-2 layer for a decoder of `depth` layers, checked.
    pub fn stage2_layer(&self, depth: usize) -> Result<usize> {
        let layer = self.stage2_layer.unwrap_or(depth / 2);
        if depth < 2 {
            return Err(Error::invalid(
                "stage2_layer",
                format!("needs a decoder of 2 or more layers; this one has {depth}"),
            ));
        }
        if layer == 0 || layer >= depth {
            return Err(Error::invalid(
                "stage2_layer",
                format!("must be within 1..={} for this {depth}-layer decoder, got {layer}", depth - 1),
            ));
        }
        Ok(layer)
    }
}

/// The pillar quantile of the released LLaVA-1.5 tower.
pub const DEFAULT_PILLAR_QUANTILE: f64 = 0.55;
/// The pillar quantile the released LLaVA-NeXT launch script sets (its tower has no default).
pub const ANYRES_PILLAR_QUANTILE: f64 = 0.5;

/// Stage-1 anchors K1 and the per-cell top-n on an anyres layout for budget B: the NeXT table at 160, 320
/// and 640 (290/2, 582/3, 1162/3); any other budget K1 = round(1.8125·B) (the 160 row's ratio; within 2
/// of the other rows) and top-n 2 up to B = 240, 3 above.
pub fn anyres_budgets(budget: usize) -> (usize, usize) {
    match budget {
        160 => (290, 2),
        320 => (582, 3),
        640 => (1162, 3),
        b => (((1.8125 * b as f64).round() as usize).max(1), if b <= 240 { 2 } else { 3 }),
    }
}

/// Survivors of stage 2 on an anyres layout: a tenth of the `n_v` vision tokens in the decoder.
pub fn anyres_k2(n_v: usize) -> usize {
    (n_v / 10).max(1)
}

/// Token counts for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Budgets {
    /// Anchors kept by stage 1 (every patch when stage 1 is off).
    pub k1: usize,
    /// Survivors of stage 2; `None` when there is no cut (stage 1 only, or K2 ≥ K1).
    pub k2: Option<usize>,
    /// Candidates per 2×2 cell.
    pub top_n: usize,
}

/// Resolves budget B on an `h`×`w` grid into (K1, K2, n).
///
/// The published table (B = 64/128/192 → K1 = 112/224/336, K2 = 16/32/48, n = 1/2/3) extends as
/// K1 = round(1.75·B), K2 = 2·B − K1, n = ceil(K1 / cells). K1 is also capped at 2·B − 1 so that K2 ≥ 1
/// and (K1 + K2) / 2 = B holds for every B (at B = 2 the uncapped rule would average 2.5).
pub fn budgets(budget: usize, stages: Stages, h: usize, w: usize) -> Budgets {
    let cells = (h / 2) * (w / 2);
    let (k1, k2) = counts(budget, stages, h * w);
    let top_n = match stages {
        Stages::Two => 4,
        _ if cells == 0 => 4,
        _ => k1.div_ceil(cells).clamp(1, 4),
    };
    Budgets { k1, k2, top_n }
}

/// (K1, K2) for budget B on `n` patches; see [`budgets`].
pub fn counts(budget: usize, stages: Stages, n: usize) -> (usize, Option<usize>) {
    match stages {
        Stages::Both => {
            let k1 = ((1.75 * budget as f64).round() as usize).min(2 * budget - 1).clamp(1, n);
            let k2 = (2 * budget - k1).max(1);
            (k1, (k2 < k1).then_some(k2))
        }
        Stages::One => (budget.min(n), None),
        Stages::Two => (n, (budget < n).then_some(budget)),
    }
}

/// Stage-1 anchors: top-`top_n` per 2×2 cell by saliency, then the `k1` most salient of those, returned
/// in raster order. With `cells` off, the plain global top-`k1`.
///
/// When `k1` exceeds the candidates, n is raised to ceil(k1 / cells); at 4 every patch is an anchor
/// (an odd last row or column is never a candidate otherwise).
pub fn select_anchors(saliency: &[f32], h: usize, w: usize, k1: usize, top_n: usize, cells: bool) -> Vec<usize> {
    let n = h * w;
    assert_eq!(saliency.len(), n, "saliency must have one value per patch");
    let mut candidates: Vec<usize> = if cells {
        let n_cells = (h / 2) * (w / 2);
        let mut top_n = top_n;
        if k1 > top_n * n_cells {
            top_n = k1.div_ceil(n_cells.max(1));
        }
        if top_n >= 4 || n_cells == 0 {
            return (0..n).collect();
        }
        let mut out = Vec::with_capacity(n_cells * top_n);
        for r in (0..h - h % 2).step_by(2) {
            for c in (0..w - w % 2).step_by(2) {
                let mut cell = [r * w + c, r * w + c + 1, (r + 1) * w + c, (r + 1) * w + c + 1];
                sort_desc(saliency, &mut cell);
                out.extend_from_slice(&cell[..top_n]);
            }
        }
        out
    } else {
        (0..n).collect()
    };
    sort_desc(saliency, &mut candidates);
    candidates.truncate(k1);
    candidates.sort_unstable();
    candidates
}

/// The q-quantile with linear interpolation, computed as torch.quantile does in float32.
pub fn quantile(values: &[f32], q: f64) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = q as f32 * (sorted.len() - 1) as f32;
    let below = rank as usize;
    let above = (rank.ceil() as usize).min(sorted.len() - 1);
    let (start, end, weight) = (sorted[below], sorted[above], rank - below as f32);
    // torch.lerp's two-sided form keeps the ends exact.
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// Pillars are the anchors whose saliency reaches the q-quantile of the anchors' saliencies.
pub fn pillars(anchor_saliency: &[f32], q: f64) -> Vec<bool> {
    let theta = quantile(anchor_saliency, q);
    anchor_saliency.iter().map(|&s| s >= theta).collect()
}

/// Rows of the similarity graph for the given patches: `G[a, j] = ReLU(cos(M_a, M_j)) · P_aj`, with the
/// distance fall-off `P = 1 − min(d / √distance, 1)` on the `h`×`w` grid. `m` is (N, D); result (rows, N) f32.
pub fn similarity_rows(m: &Tensor, rows: &[usize], h: usize, w: usize, distance: f64) -> Result<Tensor> {
    let dev = m.device();
    let unit = crate::l2_normalize_rows(m)?;
    let picked = unit.index_select(&index_tensor(rows, dev)?, 0)?;
    let cos = picked.matmul(&unit.t()?)?.relu()?;
    Ok((cos * falloff(rows, h, w, distance, dev)?)?)
}

/// `P[a, j] = 1 − min(d(a, j) / τ, 1)`, τ = √distance, for the given rows.
fn falloff(rows: &[usize], h: usize, w: usize, distance: f64, dev: &Device) -> Result<Tensor> {
    let tau = distance.sqrt();
    let mut p = Vec::with_capacity(rows.len() * h * w);
    for &a in rows {
        let (ar, ac) = ((a / w) as f64, (a % w) as f64);
        for j in 0..h * w {
            let (jr, jc) = ((j / w) as f64, (j % w) as f64);
            let d = ((ar - jr).powi(2) + (ac - jc).powi(2)).sqrt();
            p.push((1.0 - (d / tau).min(1.0)) as f32);
        }
    }
    Ok(Tensor::from_vec(p, (rows.len(), h * w), dev)?)
}

/// Collector outputs: `Σ_j w_j X_j` with `w = G_a / (Σ_k G_ak + 1e-8)` and the self weight set to 1.
/// `graph` is (C, N) for the collectors `rows`; `x` is (N, D). Result (C, D) in `x`'s dtype.
pub fn aggregate(graph: &Tensor, rows: &[usize], x: &Tensor) -> Result<Tensor> {
    let (c, n) = graph.dims2()?;
    let weights = graph.broadcast_div(&(graph.sum_keepdim(1)? + 1e-8)?)?;
    let mut self_mask = vec![0f32; c * n];
    for (i, &a) in rows.iter().enumerate() {
        self_mask[i * n + a] = 1.0;
    }
    let self_mask = Tensor::from_vec(self_mask, (c, n), x.device())?;
    // w·(1 − e_a) + e_a replaces the self weight exactly with 1.
    let weights = ((weights * (1.0 - &self_mask)?)? + self_mask)?;
    Ok(weights.matmul(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
}

/// What stage 1 produced for one image.
#[derive(Debug, Clone)]
pub struct Stage1 {
    /// Kept patches, raster order.
    pub anchors: Vec<usize>,
    /// Per anchor: a pillar (kept unchanged) or a collector (aggregated).
    pub pillars: Vec<bool>,
    /// (K1, D): one token per anchor, in anchor order.
    pub tokens: Tensor,
}

/// Runs stage 1 on one image: `saliency` per patch, aggregation features `x` (N, D), similarity features
/// `m` (N, D') on an `h`×`w` grid.
pub fn stage1(
    saliency: &[f32],
    x: &Tensor,
    m: &Tensor,
    (h, w): (usize, usize),
    budgets: &Budgets,
    cfg: &NuwaConfig,
) -> Result<Stage1> {
    let anchors = select_anchors(saliency, h, w, budgets.k1, budgets.top_n, cfg.cells);
    let anchor_saliency: Vec<f32> = anchors.iter().map(|&a| saliency[a]).collect();
    let pillars = pillars(&anchor_saliency, cfg.pillar_quantile.unwrap_or(DEFAULT_PILLAR_QUANTILE));
    let fold = |collectors: &[usize]| -> Result<Tensor> {
        aggregate(&similarity_rows(m, collectors, h, w, cfg.distance)?, collectors, x)
    };
    let tokens = anchor_tokens(x, &anchors, &pillars, fold)?;
    Ok(Stage1 { anchors, pillars, tokens })
}

/// One token per anchor, in anchor order: a pillar's own row of `x`, a collector's row of
/// `fold(collectors)` (called only when there are collectors).
fn anchor_tokens(
    x: &Tensor,
    anchors: &[usize],
    pillars: &[bool],
    fold: impl Fn(&[usize]) -> Result<Tensor>,
) -> Result<Tensor> {
    let (p, c): (Vec<_>, Vec<_>) = anchors.iter().zip(pillars).partition(|(_, &is_p)| is_p);
    let (pillar_rows, collector_rows): (Vec<usize>, Vec<usize>) =
        (p.into_iter().map(|(&a, _)| a).collect(), c.into_iter().map(|(&a, _)| a).collect());
    let dev = x.device();
    let kept = x.index_select(&index_tensor(&pillar_rows, dev)?, 0)?;
    if collector_rows.is_empty() {
        return Ok(kept);
    }
    let folded = fold(&collector_rows)?;
    // Rows of cat([pillars, collectors]) back into anchor order.
    let (mut next_p, mut next_c) = (0, pillar_rows.len());
    let order: Vec<usize> = pillars
        .iter()
        .map(|&is_p| {
            let slot = if is_p { &mut next_p } else { &mut next_c };
            *slot += 1;
            *slot - 1
        })
        .collect();
    Ok(Tensor::cat(&[&kept, &folded], 0)?.index_select(&index_tensor(&order, dev)?, 0)?)
}

/// Real candidates of a merged `h`×`w` grid zero-padded to even sides: each 2×2 cell's `top_n` best
/// positions by saliency (padding scores 0 and may fill a cell's quota), as padded indices, cell order.
pub fn merged_candidates(padded: &[f32], (ph, pw): (usize, usize), top_n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(padded.len());
    for r in (0..ph).step_by(2) {
        for c in (0..pw).step_by(2) {
            let mut cell = [r * pw + c, r * pw + c + 1, (r + 1) * pw + c, (r + 1) * pw + c + 1];
            sort_desc(padded, &mut cell);
            out.extend_from_slice(&cell[..top_n.min(4)]);
        }
    }
    out
}

/// What stage 1 on a merged grid produced, with the real candidates (raster, ascending) it chose from.
#[derive(Debug, Clone)]
pub struct MergedStage1 {
    pub candidates: Vec<usize>,
    pub stage1: Stage1,
}

/// Stage 1 on the merged `h`×`w` grid of Qwen2.5-VL (SPEC-qwen2.5-vl §7.2): the grid zero-padded to even
/// sides, top-n per 2×2 cell, the K1 best candidates (padding dropped), pillars at the `quantile` of the
/// anchors' saliency, collectors folding in every similar token within 0.8 of the padded diagonal
/// (plain row normalisation, no self-weight override). `x` aggregation features, `m` similarity features,
/// both (N, D) raster.
pub fn merged_stage1(
    saliency: &[f32],
    x: &Tensor,
    m: &Tensor,
    (h, w): (usize, usize),
    ratios: &KeepRatios,
    quantile: f64,
) -> Result<MergedStage1> {
    let (ph, pw) = (h + h % 2, w + w % 2);
    let mut padded = vec![0f32; ph * pw];
    for r in 0..h {
        padded[r * pw..r * pw + w].copy_from_slice(&saliency[r * w..(r + 1) * w]);
    }
    let real = |i: usize| i / pw < h && i % pw < w;
    let raster = |i: usize| (i / pw) * w + i % pw;
    let mut chosen = merged_candidates(&padded, (ph, pw), ratios.top_n);
    let mut candidates: Vec<usize> = chosen.iter().copied().filter(|&i| real(i)).map(raster).collect();
    candidates.sort_unstable();
    let k1 = Keep::k1(ratios, h * w, (ph / 2) * (pw / 2));
    sort_desc(&padded, &mut chosen);
    chosen.truncate(k1);
    chosen.sort_unstable();
    let anchors: Vec<usize> = chosen.into_iter().filter(|&i| real(i)).map(raster).collect();
    let anchor_saliency: Vec<f32> = anchors.iter().map(|&a| saliency[a]).collect();
    let pillars = pillars(&anchor_saliency, quantile);
    let diagonal = (((ph - 1).pow(2) + (pw - 1).pow(2)) as f64).sqrt();
    let tau = if diagonal == 0.0 { 1.0 } else { MERGED_DISTANCE_FRACTION * diagonal };
    let fold = |collectors: &[usize]| -> Result<Tensor> {
        let graph = similarity_rows(m, collectors, h, w, tau * tau)?;
        let weights = graph.broadcast_div(&(graph.sum_keepdim(1)? + 1e-8)?)?;
        Ok(weights.matmul(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
    };
    let tokens = anchor_tokens(x, &anchors, &pillars, fold)?;
    Ok(MergedStage1 { candidates, stage1: Stage1 { anchors, pillars, tokens } })
}

/// Stage 2: which of the `scores.len()` vision tokens survive, ascending. `Attention` keeps the `k2`
/// highest scores (ties to the lower index); `Random` a seeded uniform subset.
pub fn stage2_keep(scores: &[f32], k2: usize, rule: Stage2Rule, seed: u64) -> Vec<usize> {
    match rule {
        Stage2Rule::Attention => top_k_ascending(scores, k2),
        Stage2Rule::Random => {
            use rand::{seq::SliceRandom, SeedableRng};
            let mut idx: Vec<usize> = (0..scores.len()).collect();
            idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            idx.truncate(k2);
            idx.sort_unstable();
            idx
        }
    }
}

/// Stage 2 inside the decoder: before `layer`, keep the `k2` vision tokens the last prompt token
/// attended to most in the layer before. On the merged-grid family the score is the mean of the last
/// three rows, maximum over heads, and `--as-released` runs that layer without the causal mask (which
/// also happens with no cut, so the dropper can exist without one).
pub struct Stage2 {
    layer: usize,
    k2: Option<usize>,
    rule: Stage2Rule,
    seed: u64,
    span: Span,
    /// Score = max over heads of the mean of the last `rows` query rows (1 row: the head mean).
    rows: usize,
    bidirectional: Option<usize>,
    records: Vec<CutRecord>,
}

impl Stage2 {
    /// `None` when there is nothing to do (stage 1 only, or K2 ≥ the tokens in `span`).
    pub fn new(cfg: &NuwaConfig, span: Span, depth: usize) -> Result<Option<Self>> {
        let merged = span.family == MERGED_GRID_FAMILY;
        let layer = cfg.cut_layer(merged, depth)?;
        let k2 = match (cfg.stages, span.layout.anyres()) {
            _ if merged => cfg.merged_k2(span.len(), span.n_slots())?,
            (Stages::One, _) => None,
            (Stages::Both, Some(_)) => Some(anyres_k2(span.len())),
            _ => counts(cfg.budget_on(span.n_slots()), cfg.stages, span.n_slots()).1,
        }
        .filter(|&k2| k2 < span.len());
        let bidirectional = (merged && cfg.as_released).then_some(layer - 1);
        if k2.is_none() && bidirectional.is_none() {
            return Ok(None);
        }
        let rows = if merged { 3 } else { 1 };
        Ok(Some(Self { layer, k2, rule: cfg.stage2_rule, seed: cfg.seed, span, rows, bidirectional, records: vec![] }))
    }
}

impl TokenDropper for Stage2 {
    fn cut_layers(&self) -> Vec<usize> {
        self.k2.map(|_| self.layer).into_iter().collect()
    }

    fn attention_rows(&self, _layer: usize, seq_len: usize) -> Vec<usize> {
        (seq_len.saturating_sub(self.rows)..seq_len).collect()
    }

    fn attention_per_head(&self, _layer: usize) -> bool {
        self.rows > 1
    }

    fn bidirectional_layers(&self) -> Vec<usize> {
        self.bidirectional.into_iter().collect()
    }

    fn cut(&mut self, probe: &dyn DecoderProbe) -> Result<Cut> {
        let attn = probe.prev_attention().expect("the asked-for rows are handed over");
        let row = if self.rows > 1 {
            // (heads, rows, T): mean over the rows, then the maximum over heads.
            attn.mean(1)?.max(0)?.to_vec1::<f32>()?
        } else {
            attn.squeeze(0)?.to_vec1::<f32>()?
        };
        let k2 = self.k2.expect("a cut is asked for only with K2");
        let scores = &row[self.span.slots()];
        let chosen = stage2_keep(scores, k2, self.rule, self.seed);
        let (cut, record) = self.span.cut(self.layer, row.len(), &chosen, None)?;
        self.records.push(CutRecord { scores: Some(scores.to_vec()), ..record });
        Ok(cut)
    }
}

impl VisionDropper for Stage2 {
    fn records(&self) -> &[CutRecord] {
        &self.records
    }
}

impl FromBudget for NuwaConfig {
    fn from_budget(budget: usize, seed: u64) -> Result<Self> {
        Ok(NuwaConfig { budget, seed, ..NuwaConfig::default() })
    }
}

impl Pruner for NuwaConfig {
    fn budget(&self) -> Option<usize> {
        // A keep ratio has no token count until the image is known.
        self.keep.is_none().then_some(self.budget)
    }

    fn keep_ratio(&self, family: &str) -> Option<f64> {
        match self.keep {
            Some(Keep::Ratio(r)) => Some(r),
            Some(Keep::Explicit(_)) => None,
            // The merged-grid family's default preset.
            None if family == MERGED_GRID_FAMILY && self.budget == NuwaConfig::default().budget => Some(0.5),
            None => None,
        }
    }

    fn validate(&self) -> Result<()> {
        NuwaConfig::validate(self)
    }

    fn default_positions(&self) -> PositionPolicy {
        PositionPolicy::Original
    }

    fn needs(&self) -> Needs {
        Needs { similarity: self.stages != Stages::Two }
    }

    fn vision_tokens_per_layer(&self, family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        if family == MERGED_GRID_FAMILY {
            return self.merged_tokens_per_layer(layout, depth);
        }
        if let (Some((base, local)), Stages::Both | Stages::One) = (layout.anyres(), self.stages) {
            let (k1, _) = self.anyres_split(layout);
            let k1 = k1.0.min(base.rows * base.cols) + k1.1.min(local.rows * local.cols);
            let n_v = k1 + layout.newline_slots().len();
            return Ok(match self.stages {
                Stages::Both => schedule_steps(n_v, &[(self.stage2_layer(depth)?, anyres_k2(n_v))], depth),
                _ => vec![n_v; depth],
            });
        }
        Ok(match counts(self.budget_on(layout.len()), self.stages, layout.len()) {
            (k1, Some(k2)) if k2 < k1 => schedule_steps(k1, &[(self.stage2_layer(depth)?, k2)], depth),
            (k1, _) => vec![k1; depth],
        })
    }

    fn reducer(&self) -> Option<&dyn VisionReducer> {
        (self.stages != Stages::Two).then_some(self as &dyn VisionReducer)
    }

    fn dropper(&self, span: Span, depth: usize) -> Result<Option<Box<dyn VisionDropper>>> {
        Ok(Stage2::new(self, span, depth)?.map(|d| Box::new(d) as Box<dyn VisionDropper>))
    }
}

impl NuwaConfig {
    /// Stage-1 targets (base, local) and the per-cell top-n on an anyres layout: K1 split evenly over
    /// the views, t = ⌊K1 / V⌋ for the base view and t·(V − 1) for the crops.
    pub fn anyres_split(&self, layout: &VisualLayout) -> ((usize, usize), usize) {
        let budget = self.budget_on(layout.len());
        let (k1, top_n) = match self.stages {
            Stages::One => (budget, anyres_budgets(budget).1),
            _ => anyres_budgets(budget),
        };
        let t = k1 / layout.views;
        ((t, t * (layout.views - 1)), top_n)
    }

    /// Stage 1 on each grid of an anyres layout; every newline slot stays as a token of its own.
    fn reduce_anyres(&self, ev: &VisionEvidence) -> Result<Reduction> {
        let ((k_base, k_local), top_n) = self.anyres_split(&ev.layout);
        let cfg = NuwaConfig { pillar_quantile: Some(self.pillar_quantile_on(&ev.layout)), ..self.clone() };
        let (saliency, similarity) = (&ev.saliency()?.summed, ev.similarity()?);
        let dev = ev.features.device();
        let (mut parts, mut sources, mut pillars) = (Vec::new(), Vec::new(), Vec::new());
        for (grid, k) in [(0, k_base), (1, k_local)] {
            let slots = ev.layout.patch_slots(grid);
            if k == 0 || slots.is_empty() {
                continue;
            }
            let g = ev.layout.grids[grid];
            let idx = index_tensor(&slots, dev)?;
            let grid_saliency: Vec<f32> = slots.iter().map(|&s| saliency[s]).collect();
            let budgets = Budgets { k1: k.min(slots.len()), k2: None, top_n };
            let (x, m) = (ev.features.index_select(&idx, 0)?, similarity.index_select(&idx, 0)?);
            let s1 = stage1(&grid_saliency, &x, &m, (g.rows, g.cols), &budgets, &cfg)?;
            pillars.extend(s1.anchors.iter().zip(&s1.pillars).filter(|(_, &p)| p).map(|(&a, _)| slots[a]));
            sources.extend(s1.anchors.iter().map(|&a| slots[a]));
            parts.push(s1.tokens);
        }
        let newlines = ev.layout.newline_slots();
        if !newlines.is_empty() {
            // Their features are the model's placeholder; the model embeds newline tokens itself.
            parts.push(ev.features.index_select(&index_tensor(&newlines, dev)?, 0)?);
            sources.extend(&newlines);
        }
        // Sequence order: the base tokens, then each row's survivors followed by its newline.
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by_key(|&i| sources[i]);
        let tokens = Tensor::cat(&parts, 0)?.index_select(&index_tensor(&order, dev)?, 0)?;
        let sources: Vec<usize> = order.iter().map(|&i| sources[i]).collect();
        Ok(Reduction { tokens: VisionTokens::Features(tokens), sources: singletons(&sources), pillars })
    }
}

impl NuwaConfig {
    /// The decoder layer before which stage 2 cuts: the one asked for, else half the depth; on the
    /// merged-grid family one layer later, as released (the scores of layer depth/2 cut before the next).
    fn cut_layer(&self, merged: bool, depth: usize) -> Result<usize> {
        let layer = self.stage2_layer(depth)?;
        Ok(if merged && self.stage2_layer.is_none() { (layer + 1).min(depth - 1) } else { layer })
    }

    /// Survivors of stage 2 on the merged-grid family for `k1` vision tokens in the decoder out of the
    /// image's `n`: K2 = ⌊K1·r2⌋ with both stages, the keep ratio's share of `n` with stage 2 alone.
    fn merged_k2(&self, k1: usize, n: usize) -> Result<Option<usize>> {
        Ok(match self.stages {
            Stages::One => None,
            Stages::Both => Keep::k2(&self.merged_ratios()?, k1),
            Stages::Two => counts(self.budget_on(n), Stages::Two, n).1,
        })
    }

    /// The per-layer schedule on the merged-grid family: K1 = [`Keep::k1`] on the grid padded to even sides
    /// (every token with stage 2 alone), then [`NuwaConfig::merged_k2`] from the stage-2 layer on.
    fn merged_tokens_per_layer(&self, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        let (h, w) = layout.raster_grid()?;
        let n = h * w;
        let k1 = match self.stages {
            Stages::Two => n,
            _ => Keep::k1(&self.merged_ratios()?, n, h.div_ceil(2) * w.div_ceil(2)),
        };
        Ok(match self.merged_k2(k1, n)?.filter(|&k2| k2 < k1) {
            Some(k2) => schedule_steps(k1, &[(self.cut_layer(true, depth)?, k2)], depth),
            None => vec![k1; depth],
        })
    }

    /// Stage 1 on a merged grid; `--as-released` reads the similarity features in the encoder's (window)
    /// order as if they were raster, as the released code does.
    fn reduce_merged(&self, ev: &VisionEvidence, grid: (usize, usize)) -> Result<Reduction> {
        let ratios = self.merged_ratios()?;
        let m = match (&ev.encoder_order, self.as_released) {
            (Some(order), true) => ev.similarity()?.index_select(&index_tensor(order, ev.features.device())?, 0)?,
            _ => ev.similarity()?.clone(),
        };
        let quantile = self.pillar_quantile.unwrap_or(MERGED_PILLAR_QUANTILE);
        let s1 = merged_stage1(&ev.saliency()?.mean(), &ev.features, &m, grid, &ratios, quantile)?.stage1;
        let pillars = s1.anchors.iter().zip(&s1.pillars).filter(|(_, &p)| p).map(|(&a, _)| a).collect();
        Ok(Reduction { tokens: VisionTokens::Features(s1.tokens), sources: singletons(&s1.anchors), pillars })
    }
}

impl VisionReducer for NuwaConfig {
    fn reduce(&self, ev: &VisionEvidence, _embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction> {
        if ev.layout.anyres().is_some() {
            return self.reduce_anyres(ev);
        }
        let grid = ev.layout.raster_grid()?;
        if ev.model == MERGED_GRID_FAMILY {
            return self.reduce_merged(ev, grid);
        }
        let b = budgets(self.budget_on(ev.layout.len()), self.stages, grid.0, grid.1);
        let s1 = stage1(&ev.saliency()?.summed, &ev.features, ev.similarity()?, grid, &b, self)?;
        let pillars = s1.anchors.iter().zip(&s1.pillars).filter(|(_, &p)| p).map(|(&a, _)| a).collect();
        Ok(Reduction { tokens: VisionTokens::Features(s1.tokens), sources: singletons(&s1.anchors), pillars })
    }
}
