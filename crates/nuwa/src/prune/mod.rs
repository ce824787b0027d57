//! Visual-token reduction methods: pure tensor code over saliency rows, features and attention scores.
//! Nothing here knows a model: vision-side methods work on encoder outputs, in-decoder methods implement
//! [`crate::hooks::TokenDropper`] over a [`crate::hooks::DecoderProbe`].
pub mod dart;
pub mod divprune;
pub mod fastv;
pub mod nuwa;
pub mod pdrop;
pub mod pool;
pub mod random;
pub mod sparsevlm;
pub mod visionzip;
pub mod vispruner;

use crate::hooks::Cut;
use candle_core::Tensor;

/// The methods a request can ask for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    /// Every vision token, the unpruned model.
    None,
    Nuwa(nuwa::NuwaConfig),
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Nuwa(_) => "nuwa",
        }
    }

    /// The budget the method was asked for.
    pub fn budget(&self) -> Option<usize> {
        match self {
            Method::None => None,
            Method::Nuwa(c) => Some(c.budget),
        }
    }

    /// The position ids a method uses unless the request overrides them.
    pub fn default_positions(&self) -> PositionPolicy {
        match self {
            Method::None | Method::Nuwa(_) => PositionPolicy::Original,
        }
    }

    /// The in-decoder part of the method for an image whose tokens occupy `span`, if it has one.
    pub fn dropper(&self, span: Span, depth: usize) -> crate::Result<Option<Box<dyn VisionDropper>>> {
        Ok(match self {
            Method::None => None,
            Method::Nuwa(c) => nuwa::Stage2::new(c, span, depth)?.map(|d| Box::new(d) as Box<dyn VisionDropper>),
        })
    }
}

/// How vision tokens (and the text after them) are numbered for RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionPolicy {
    /// Each token keeps the position it has in the unpruned sequence (P + raster index); text after
    /// the image continues at P + N.
    #[default]
    Original,
    /// The shortened sequence is numbered 0, 1, 2, … with no gaps.
    Contiguous,
    /// Kept tokens spread over the image's span [P, P + N − 1] in proportion to their raster index;
    /// text after the image continues after it.
    Stretched,
}

/// Position ids for `prefix_len` tokens, one vision token per entry of `raster` (its representative
/// patch), and `suffix_len` text tokens, on an image of `n_patches`.
pub fn layout_positions(
    policy: PositionPolicy,
    prefix_len: usize,
    raster: &[usize],
    n_patches: usize,
    suffix_len: usize,
) -> Vec<u32> {
    let p = prefix_len;
    let vision: Vec<usize> = match policy {
        PositionPolicy::Original => raster.iter().map(|&i| p + i).collect(),
        PositionPolicy::Contiguous => (p..p + raster.len()).collect(),
        PositionPolicy::Stretched => {
            let span = n_patches.saturating_sub(1);
            let last = raster.iter().copied().max().unwrap_or(0).max(1);
            raster.iter().enumerate().map(|(j, &i)| if j == 0 { p } else { p + (i * span).div_ceil(last) }).collect()
        }
    };
    let text_start = match policy {
        PositionPolicy::Contiguous => p + raster.len(),
        _ => p + n_patches,
    };
    (0..p).chain(vision).chain(text_start..text_start + suffix_len).map(|v| v as u32).collect()
}

/// What one cut kept: per surviving vision token, the patches it stands for (one for a plain token,
/// several for a merged one), in sequence order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CutRecord {
    /// The decoder layer before which the cut happened.
    pub layer: usize,
    pub kept: Vec<Vec<usize>>,
    /// Position ids of the whole sequence after the cut (kept out of JSON: long and derivable).
    #[serde(skip)]
    pub positions: Vec<u32>,
}

/// An in-decoder method that reports what it kept.
pub trait VisionDropper: crate::hooks::TokenDropper {
    fn records(&self) -> &[CutRecord];
}

/// The vision tokens inside the decoder's sequence, followed across cuts.
#[derive(Debug, Clone)]
pub struct Span {
    /// Sequence slot of the first vision token (the prefix length P).
    pub start: usize,
    /// Per vision token in the current sequence, its source patches.
    pub tokens: Vec<Vec<usize>>,
    pub policy: PositionPolicy,
    /// The image's patch grid (rows, columns).
    pub grid: (usize, usize),
    pub suffix_len: usize,
}

impl Span {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn n_patches(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Slots of the vision tokens in the current sequence.
    pub fn slots(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len()
    }

    /// Keeps the vision tokens at `local` (ascending, indices into the span) and appends `merged` rows
    /// after them, returning the decoder cut for a sequence of `seq_len` and the record of it.
    pub fn cut(
        &mut self,
        layer: usize,
        seq_len: usize,
        local: &[usize],
        merged: Option<(Tensor, Vec<Vec<usize>>)>,
    ) -> (Cut, CutRecord) {
        let slots = self.slots();
        let keep: Vec<usize> =
            (0..slots.start).chain(local.iter().map(|&i| slots.start + i)).chain(slots.end..seq_len).collect();
        let mut tokens: Vec<Vec<usize>> = local.iter().map(|&i| self.tokens[i].clone()).collect();
        let insert = merged.map(|(rows, sources)| {
            tokens.extend(sources);
            (slots.start + local.len(), rows)
        });
        self.tokens = tokens;
        let reps: Vec<usize> = self.tokens.iter().map(|s| s.iter().copied().min().unwrap_or(0)).collect();
        let positions = layout_positions(self.policy, self.start, &reps, self.n_patches(), self.suffix_len);
        let record = CutRecord { layer, kept: self.tokens.clone(), positions: positions.clone() };
        (Cut { keep, insert, positions: Some(positions) }, record)
    }
}

/// Indices of the `k` largest scores, ascending; ties go to the lower index.
pub fn top_k_ascending(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}
