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

/// The methods a request can ask for. A new method is one file in this folder plus its variant here.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    /// Every vision token, the unpruned model.
    None,
    Nuwa(nuwa::NuwaConfig),
    /// Single cut before decoder layer 2 by the last token's attention.
    FastV { budget: usize, count: fastv::Count },
    /// [CLS] + dominant patches + contextual merges, before the projector.
    VisionZip { budget: usize },
    /// Adaptive average pooling of the patch grid, before the projector.
    Pool { budget: usize },
    /// A seeded random subset of patches, before the projector.
    Random { budget: usize, seed: u64 },
    /// Max–min diversity over the projected tokens.
    DivPrune { budget: usize },
    /// Duplication-aware pivots before decoder layer 2.
    Dart { budget: usize },
    /// Pyramid of cuts after layers 2, 6, 15 by the last token's attention.
    PDrop { budget: usize },
    /// Text-rater cuts after layers 2, 6, 15 with recycling.
    SparseVlm { budget: usize },
    /// Important (attention) + diverse (similarity) patches, before the projector.
    VisPruner { budget: usize },
    /// A given list of patches (raster indices), before the projector.
    Manual { keep: Vec<usize> },
}

/// Method names as the command line spells them.
pub const METHOD_NAMES: [&str; 12] =
    ["none", "nuwa", "fastv", "visionzip", "pool", "random", "divprune", "dart", "pdrop", "sparsevlm", "vispruner", "manual"];

impl Method {
    /// A method by name with its default knobs at `budget` (`seed` for the random ones). `manual`
    /// needs its list of patches and is built directly.
    pub fn from_name(name: &str, budget: usize, seed: u64) -> crate::Result<Self> {
        let m = match name {
            "none" => Method::None,
            "nuwa" => Method::Nuwa(nuwa::NuwaConfig { budget, seed, ..nuwa::NuwaConfig::default() }),
            "fastv" => Method::FastV { budget, count: fastv::Count::Average },
            "visionzip" => Method::VisionZip { budget },
            "pool" => Method::Pool { budget },
            "random" => Method::Random { budget, seed },
            "divprune" => Method::DivPrune { budget },
            "dart" => Method::Dart { budget },
            "pdrop" => Method::PDrop { budget },
            "sparsevlm" => Method::SparseVlm { budget },
            "vispruner" => Method::VisPruner { budget },
            "manual" => {
                return Err(crate::Error::InvalidArgument("--prune manual needs --keep-file FILE (a JSON list of patch indices)".into()))
            }
            other => {
                return Err(crate::Error::InvalidArgument(format!(
                    "--prune {other:?}: unknown method (one of {})",
                    METHOD_NAMES.join(", ")
                )))
            }
        };
        m.validate()?;
        Ok(m)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Nuwa(_) => "nuwa",
            Method::FastV { .. } => "fastv",
            Method::VisionZip { .. } => "visionzip",
            Method::Pool { .. } => "pool",
            Method::Random { .. } => "random",
            Method::DivPrune { .. } => "divprune",
            Method::Dart { .. } => "dart",
            Method::PDrop { .. } => "pdrop",
            Method::SparseVlm { .. } => "sparsevlm",
            Method::VisPruner { .. } => "vispruner",
            Method::Manual { .. } => "manual",
        }
    }

    /// The budget the method was asked for.
    pub fn budget(&self) -> Option<usize> {
        match self {
            Method::None | Method::Manual { .. } => None,
            Method::Nuwa(c) => Some(c.budget),
            Method::FastV { budget, .. }
            | Method::VisionZip { budget }
            | Method::Pool { budget }
            | Method::Random { budget, .. }
            | Method::DivPrune { budget }
            | Method::Dart { budget }
            | Method::PDrop { budget }
            | Method::SparseVlm { budget }
            | Method::VisPruner { budget } => Some(*budget),
        }
    }

    /// Rejects values no model could run with.
    pub fn validate(&self) -> crate::Result<()> {
        match self {
            Method::Nuwa(c) => c.validate(),
            Method::PDrop { budget } | Method::SparseVlm { budget } => pdrop::schedule(*budget).map(|_| ()),
            m => match m.budget() {
                Some(0) => Err(crate::Error::InvalidArgument("--budget must be at least 1 vision token".into())),
                _ => Ok(()),
            },
        }
    }

    /// The position ids a method uses unless the request overrides them (as its released code does).
    pub fn default_positions(&self) -> PositionPolicy {
        match self {
            Method::None | Method::Nuwa(_) | Method::FastV { .. } | Method::Dart { .. } => PositionPolicy::Original,
            _ => PositionPolicy::Contiguous,
        }
    }

    /// Vision tokens entering each of `depth` decoder layers on an `h`×`w` grid, as the method schedules
    /// them (the count a budget is measured by).
    pub fn vision_tokens_per_layer(&self, (h, w): (usize, usize), depth: usize) -> crate::Result<Vec<usize>> {
        let n = h * w;
        let steps = |first: usize, cuts: &[(usize, usize)]| {
            let mut per_layer = vec![first; depth];
            for &(layer, count) in cuts {
                per_layer[layer.min(depth)..].fill(count);
            }
            per_layer
        };
        Ok(match self {
            Method::None => vec![n; depth],
            Method::Nuwa(c) => {
                let b = nuwa::budgets(c.budget, c.stages, h, w);
                match b.k2.filter(|&k2| k2 < b.k1) {
                    Some(k2) => steps(b.k1, &[(c.stage2_layer(depth)?, k2)]),
                    None => vec![b.k1; depth],
                }
            }
            Method::FastV { budget, count } => steps(n, &[(fastv::LAYER, fastv::keep_count(*budget, *count, n, depth))]),
            Method::Dart { budget } => steps(n, &[(dart::LAYER, (4 + 8 * (budget / 8).max(1)).min(n))]),
            Method::PDrop { budget } => {
                let c = pdrop::schedule(*budget)?;
                steps(n, &pdrop::CUT_LAYERS.iter().copied().zip(c).collect::<Vec<_>>())
            }
            Method::SparseVlm { budget } => {
                // Each cut keeps its count and recycles ⌊0.3·pruned⌋ + 1 tokens into ⌊m/10⌋ + 1 merged ones.
                let mut n_v = n;
                let cuts: Vec<(usize, usize)> = pdrop::CUT_LAYERS
                    .iter()
                    .zip(pdrop::schedule(*budget)?)
                    .map(|(&layer, keep)| {
                        let k = keep.min(n_v - 1);
                        let m = (n_v - k) * 3 / 10 + 1;
                        n_v = k + m / 10 + 1;
                        (layer, n_v)
                    })
                    .collect();
                steps(n, &cuts)
            }
            Method::Pool { budget } => {
                let (ho, wo) = pool::output_grid(*budget, h, w);
                vec![ho * wo; depth]
            }
            Method::VisionZip { budget }
            | Method::Random { budget, .. }
            | Method::DivPrune { budget }
            | Method::VisPruner { budget } => vec![(*budget).min(n); depth],
            Method::Manual { keep } => vec![keep.len(); depth],
        })
    }

    /// The in-decoder part of the method for an image whose tokens occupy `span`, if it has one.
    pub fn dropper(&self, span: Span, depth: usize) -> crate::Result<Option<Box<dyn VisionDropper>>> {
        Ok(match self {
            Method::Nuwa(c) => nuwa::Stage2::new(c, span, depth)?.map(|d| Box::new(d) as Box<dyn VisionDropper>),
            Method::FastV { budget, count } => {
                let keep = fastv::keep_count(*budget, *count, span.n_patches(), depth);
                Some(Box::new(fastv::SingleCut::new(fastv::LAYER, keep, fastv::Selection::Attention, span)))
            }
            Method::Dart { budget } => Some(Box::new(dart::Dart::new(*budget, span))),
            Method::PDrop { budget } => Some(Box::new(pdrop::PyramidDrop::new(*budget, span)?)),
            Method::SparseVlm { budget } => Some(Box::new(sparsevlm::SparseVlm::new(*budget, span)?)),
            _ => None,
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

/// Orders `indices` by `values` descending; ties go to the lower index (the reference code leaves ties
/// to torch's top-k, so we fix one rule for every method).
pub fn sort_desc(values: &[f32], indices: &mut [usize]) {
    indices.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
}

/// Indices of the `k` largest scores, best first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    sort_desc(scores, &mut idx);
    idx.truncate(k);
    idx
}

/// Indices of the `k` largest scores, ascending.
pub fn top_k_ascending(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx = top_k(scores, k);
    idx.sort_unstable();
    idx
}
