//! Visual-token reduction methods: pure tensor code over saliency rows, features and attention scores.
//! Nothing here knows a model: vision-side methods work on [`VisionEvidence`] through
//! [`VisionReducer`], in-decoder methods implement [`crate::hooks::TokenDropper`] over a
//! [`crate::hooks::DecoderProbe`]. Each method lives in one file and implements [`Pruner`]; the
//! [`methods!`] list below is the one place they are named.
pub mod dart;
pub mod divprune;
pub mod fastv;
pub mod none;
pub mod nuwa;
pub mod pdrop;
pub mod pool;
pub mod positions;
pub mod random;
pub mod sparsevlm;
pub mod spec;
pub mod visionzip;
pub mod vispruner;

pub use positions::PositionPolicy;
pub use spec::{Budget, PruneSpec};

use crate::hooks::Cut;
use crate::layout::{Needs, Positions, SequenceLayout, VisionEvidence, VisualLayout};
use crate::{Error, Result};
use candle_core::Tensor;

/// What one method is: its knobs (the struct implementing this) and what it does with them.
pub trait Pruner {
    /// The budget the method was asked for.
    fn budget(&self) -> Option<usize>;
    /// The keep ratio it runs with on a model of `family`, for methods set by one there (then the token
    /// budget does not apply).
    fn keep_ratio(&self, _family: &str) -> Option<f64> {
        None
    }
    /// Rejects values no model could run with (layer bounds are checked against the model later).
    fn validate(&self) -> Result<()> {
        match self.budget() {
            Some(0) => Err(Error::invalid("budget", "must be at least 1 vision token")),
            _ => Ok(()),
        }
    }
    /// The position ids the method uses unless the request overrides them (as its released code does).
    fn default_positions(&self) -> PositionPolicy {
        PositionPolicy::Contiguous
    }
    /// What the vision encoder must produce beyond the always-present evidence.
    fn needs(&self) -> Needs {
        Needs::default()
    }
    /// Vision tokens entering each of `depth` decoder layers for an image laid out as `layout` on a model
    /// of `family`; by default the budget (every slot without one) in every layer, as a vision-side
    /// selection keeps.
    fn vision_tokens_per_layer(&self, _family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        Ok(vec![self.budget().map_or(layout.len(), |b| b.min(layout.len())); depth])
    }
    /// The vision-side reduction, if the method has one.
    fn reducer(&self) -> Option<&dyn VisionReducer> {
        None
    }
    /// The in-decoder part of the method for an image whose tokens occupy `span`, if it has one.
    fn dropper(&self, _span: Span, _depth: usize) -> Result<Option<Box<dyn VisionDropper>>> {
        Ok(None)
    }
}

/// Reduces an image's tokens between the vision encoder and the decoder.
pub trait VisionReducer {
    /// `embedded` gives every slot's token in the decoder's space (projected, or the model's own
    /// embedding for a newline), for methods that select among those.
    fn reduce(&self, ev: &VisionEvidence, embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction>;
}

/// What a vision-side reduction hands on.
#[derive(Debug, Clone)]
pub struct Reduction {
    pub tokens: VisionTokens,
    /// Per output token, the slots it stands for (empty for a summary token).
    pub sources: Vec<Vec<usize>>,
    /// Slots kept unchanged as Nüwa's pillars (empty for other methods).
    pub pillars: Vec<usize>,
}

impl Reduction {
    /// Rows `kept` of the features, one token per slot.
    pub fn gather(ev: &VisionEvidence, kept: Vec<usize>) -> Result<Self> {
        let idx = crate::index_tensor(&kept, ev.features.device())?;
        Ok(Self {
            tokens: VisionTokens::Features(ev.features.index_select(&idx, 0)?),
            sources: singletons(&kept),
            pillars: vec![],
        })
    }
}

/// Each slot standing for itself.
pub fn singletons(kept: &[usize]) -> Vec<Vec<usize>> {
    kept.iter().map(|&i| vec![i]).collect()
}

/// Tokens a vision-side method hands on.
#[derive(Debug, Clone)]
pub enum VisionTokens {
    /// Before the projector, (K, vision hidden).
    Features(Tensor),
    /// After the projector, (K, text hidden).
    Projected(Tensor),
}

/// Builds [`Method`]: one line per method — variant, name, the knob struct in its own file.
macro_rules! methods {
    ($($variant:ident = $name:literal => $config:ty),* $(,)?) => {
        /// The methods a request can ask for, each with its knobs.
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        #[serde(tag = "method")]
        pub enum Method {
            $(#[serde(rename = $name)] $variant($config),)*
        }

        /// Method names as requests spell them.
        pub const METHOD_NAMES: &[&str] = &[$($name),*];

        impl Method {
            pub fn name(&self) -> &'static str {
                match self { $(Method::$variant(_) => $name,)* }
            }

            /// The method's behaviour.
            pub fn pruner(&self) -> &dyn Pruner {
                match self { $(Method::$variant(c) => c,)* }
            }

            /// A method by name with its default knobs at `budget` (`seed` for the random ones).
            pub fn from_name(name: &str, budget: usize, seed: u64) -> Result<Self> {
                let m = match name {
                    $($name => Method::$variant(<$config as FromBudget>::from_budget(budget, seed)?),)*
                    other => {
                        return Err(Error::invalid(
                            "method",
                            format!("{other:?} is unknown (one of {})", METHOD_NAMES.join(", ")),
                        ))
                    }
                };
                m.validate()?;
                Ok(m)
            }
        }
    };
}

methods! {
    None = "none" => none::Unpruned,
    Nuwa = "nuwa" => nuwa::NuwaConfig,
    FastV = "fastv" => fastv::FastV,
    VisionZip = "visionzip" => visionzip::VisionZip,
    Pool = "pool" => pool::Pool,
    Random = "random" => random::Random,
    DivPrune = "divprune" => divprune::DivPrune,
    Dart = "dart" => dart::DartConfig,
    PDrop = "pdrop" => pdrop::PDrop,
    SparseVlm = "sparsevlm" => sparsevlm::SparseVlmConfig,
    VisPruner = "vispruner" => vispruner::VisPruner,
    Manual = "manual" => random::Manual,
}

/// A method's knobs from a budget alone (its defaults otherwise).
pub trait FromBudget: Sized {
    fn from_budget(budget: usize, seed: u64) -> Result<Self>;
}

impl Method {
    /// The unpruned model.
    pub const NONE: Method = Method::None(none::Unpruned);

    pub fn budget(&self) -> Option<usize> {
        self.pruner().budget()
    }

    pub fn keep_ratio(&self, family: &str) -> Option<f64> {
        self.pruner().keep_ratio(family)
    }

    pub fn validate(&self) -> Result<()> {
        self.pruner().validate()
    }

    pub fn default_positions(&self) -> PositionPolicy {
        self.pruner().default_positions()
    }

    pub fn needs(&self) -> Needs {
        self.pruner().needs()
    }

    /// Vision tokens entering each of `depth` decoder layers of a `family` model, as the method schedules
    /// them (the count a budget is measured by).
    pub fn vision_tokens_per_layer(&self, family: &str, layout: &VisualLayout, depth: usize) -> Result<Vec<usize>> {
        self.pruner().vision_tokens_per_layer(family, layout, depth).map_err(|e| self.named(e))
    }

    /// An unsupported-layout error with the method's name in front.
    fn named(&self, e: Error) -> Error {
        match e {
            Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", self.name())),
            e => e,
        }
    }

    /// The vision-side reduction, or every slot as it is for methods without one.
    pub fn reduce(&self, ev: &VisionEvidence, embedded: &dyn Fn() -> Result<Tensor>) -> Result<Reduction> {
        self.validate()?;
        match self.pruner().reducer() {
            Some(r) => r.reduce(ev, embedded).map_err(|e| self.named(e)),
            None => Ok(Reduction {
                tokens: VisionTokens::Features(ev.features.clone()),
                sources: singletons(&(0..ev.layout.len()).collect::<Vec<_>>()),
                pillars: vec![],
            }),
        }
    }

    pub fn dropper(&self, span: Span, depth: usize) -> Result<Option<Box<dyn VisionDropper>>> {
        self.pruner().dropper(span, depth)
    }
}

/// Per-layer counts for a schedule that starts at `first` and changes to `count` before each `layer`.
pub fn schedule_steps(first: usize, cuts: &[(usize, usize)], depth: usize) -> Vec<usize> {
    let mut per_layer = vec![first; depth];
    for &(layer, count) in cuts {
        per_layer[layer.min(depth)..].fill(count);
    }
    per_layer
}

/// What one cut kept: per surviving vision token, the slots it stands for (one for a plain token,
/// several for a merged one), in sequence order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CutRecord {
    /// The decoder layer before which the cut happened.
    pub layer: usize,
    pub kept: Vec<Vec<usize>>,
    /// Position ids of the whole sequence after the cut (kept out of JSON: long and derivable).
    #[serde(skip)]
    pub positions: Positions,
    /// The scores the cut ranked the vision tokens by, for methods that rank (kept out of JSON too).
    #[serde(skip)]
    pub scores: Option<Vec<f32>>,
}

/// An in-decoder method that reports what it kept.
pub trait VisionDropper: crate::hooks::TokenDropper {
    fn records(&self) -> &[CutRecord];
}

/// The vision tokens inside the decoder's sequence, followed across cuts.
#[derive(Debug, Clone)]
pub struct Span {
    /// Per vision token in the current sequence, the slots it stands for.
    pub tokens: Vec<Vec<usize>>,
    pub policy: PositionPolicy,
    /// Where the image sits in the unpruned sequence and how that is numbered.
    pub sequence: SequenceLayout,
    /// What the image's slots are.
    pub layout: VisualLayout,
    /// The model family (methods with per-family settings read it).
    pub family: &'static str,
}

impl Span {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Vision tokens of the unpruned image.
    pub fn n_slots(&self) -> usize {
        self.sequence.n_slots
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Slots of the vision tokens in the current sequence.
    pub fn slots(&self) -> std::ops::Range<usize> {
        let start = self.sequence.prefix_len;
        start..start + self.len()
    }

    /// Keeps the vision tokens at `local` (ascending, indices into the span) and appends `merged` rows
    /// after them, returning the decoder cut for a sequence of `seq_len` and the record of it.
    pub fn cut(
        &mut self,
        layer: usize,
        seq_len: usize,
        local: &[usize],
        merged: Option<(Tensor, Vec<Vec<usize>>)>,
    ) -> Result<(Cut, CutRecord)> {
        let slots = self.slots();
        let keep: Vec<usize> =
            (0..slots.start).chain(local.iter().map(|&i| slots.start + i)).chain(slots.end..seq_len).collect();
        let mut tokens: Vec<Vec<usize>> = local.iter().map(|&i| self.tokens[i].clone()).collect();
        let insert = merged.map(|(rows, sources)| {
            tokens.extend(sources);
            (slots.start + local.len(), rows)
        });
        self.tokens = tokens;
        let positions = self.sequence.assign(self.policy, &representatives(&self.tokens))?;
        let record = CutRecord { layer, kept: self.tokens.clone(), positions: positions.clone(), scores: None };
        Ok((Cut { keep, insert, positions: Some(positions) }, record))
    }
}

/// The slot that numbers each token: the first of those it stands for (0 for a summary token).
pub fn representatives(tokens: &[Vec<usize>]) -> Vec<usize> {
    tokens.iter().map(|s| s.iter().copied().min().unwrap_or(0)).collect()
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
