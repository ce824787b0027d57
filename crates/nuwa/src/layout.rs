//! The contract between models and pruning methods: where an image's tokens come from ([`VisualLayout`])
//! and how the decoder numbers them ([`Positions`]).
//!
//! A vision token's identity is its *slot* in the layout, not a raster index: LLaVA-1.5 has one 24×24
//! grid whose slots are its patches in raster order; other families add grids, row-end newline tokens or
//! a summary token. Methods that reason about space (cells, pooling, distance) read the grid a slot
//! belongs to; the overlay draws slots back onto the image.

use crate::preprocess::Geometry;
use crate::{Error, Result};
use candle_core::Tensor;

/// One grid of patches: `t` frames of `rows` × `cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Grid {
    pub t: usize,
    pub rows: usize,
    pub cols: usize,
}

/// What one vision token of the unpruned sequence stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Patch {
        grid: usize,
        row: usize,
        col: usize,
    },
    /// A learned token closing a row of a grid.
    Newline {
        grid: usize,
        row: usize,
    },
    /// A token summarising the whole image (e.g. a [CLS] token kept by a method).
    Summary,
}

/// The vision tokens a model produces for one image, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisualLayout {
    pub grids: Vec<Grid>,
    pub slots: Vec<Slot>,
    /// Encoder views the tokens come from (LLaVA-NeXT: the base view and each crop).
    pub views: usize,
}

impl VisualLayout {
    /// One `rows` × `cols` grid of patches in raster order: slot `i` is patch (i / cols, i % cols).
    pub fn grid(rows: usize, cols: usize) -> Self {
        let slots = (0..rows * cols).map(|i| Slot::Patch { grid: 0, row: i / cols, col: i % cols }).collect();
        Self { grids: vec![Grid { t: 1, rows, cols }], slots, views: 1 }
    }

    /// The slots of grid `grid`'s patches, in sequence order (raster order for every family here).
    pub fn patch_slots(&self, grid: usize) -> Vec<usize> {
        let of_grid = |s: &Slot| matches!(s, Slot::Patch { grid: g, .. } if *g == grid);
        self.slots.iter().enumerate().filter(|(_, s)| of_grid(s)).map(|(i, _)| i).collect()
    }

    /// The slots of row-end newline tokens.
    pub fn newline_slots(&self) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, s)| matches!(s, Slot::Newline { .. })).map(|(i, _)| i).collect()
    }

    /// The (base, local) grids of an anyres layout: a base view's grid, then one grid stitched from
    /// several crops (LLaVA-NeXT).
    pub fn anyres(&self) -> Option<(Grid, Grid)> {
        match self.grids.as_slice() {
            [base, local] if self.views > 1 => Some((*base, *local)),
            _ => None,
        }
    }

    /// Number of slots (vision tokens of the unpruned sequence).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// (rows, cols) when the layout is a single grid whose slots are its patches in raster order — the
    /// shape the single-grid spatial methods work on. Other layouts are refused (the caller names itself).
    pub fn raster_grid(&self) -> Result<(usize, usize)> {
        match self.grids.as_slice() {
            [g] if g.t == 1 && self.slots.len() == g.rows * g.cols && *self == Self::grid(g.rows, g.cols) => {
                Ok((g.rows, g.cols))
            }
            _ => Err(Error::Unsupported(format!(
                "defined on a single raster patch grid (LLaVA-1.5's); this image's layout has {} grids and {} slots{}",
                self.grids.len(),
                self.slots.len(),
                if self.anyres().is_some() {
                    " (LLaVA-NeXT's anyres views): not defined for llava-next here"
                } else {
                    ""
                }
            ))),
        }
    }
}

/// Position ids of a decoder sequence: one per token (1-D RoPE), or one per axis (temporal, height,
/// width) per token for multimodal RoPE, where text carries the same id on all three axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    Linear(Vec<u32>),
    MRope([Vec<u32>; 3]),
}

impl Positions {
    pub fn len(&self) -> usize {
        match self {
            Positions::Linear(p) => p.len(),
            Positions::MRope(p) => p[0].len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 1-D ids, when these are 1-D.
    pub fn as_linear(&self) -> Option<&[u32]> {
        match self {
            Positions::Linear(p) => Some(p),
            Positions::MRope(_) => None,
        }
    }

    /// Positions of the tokens at `idx` (in that order).
    pub fn select(&self, idx: &[usize]) -> Positions {
        let pick = |p: &[u32]| idx.iter().map(|&i| p[i]).collect::<Vec<u32>>();
        match self {
            Positions::Linear(p) => Positions::Linear(pick(p)),
            Positions::MRope(p) => Positions::MRope([pick(&p[0]), pick(&p[1]), pick(&p[2])]),
        }
    }

    /// The concatenation of `parts`, all of the same kind as `self`.
    pub fn concat(parts: &[Positions]) -> Result<Positions> {
        match parts.first() {
            None | Some(Positions::Linear(_)) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend_from_slice(p.as_linear().ok_or_else(mixed)?);
                }
                Ok(Positions::Linear(out))
            }
            Some(Positions::MRope(_)) => {
                let mut out: [Vec<u32>; 3] = Default::default();
                for p in parts {
                    let Positions::MRope(axes) = p else { return Err(mixed()) };
                    for (o, a) in out.iter_mut().zip(axes) {
                        o.extend_from_slice(a);
                    }
                }
                Ok(Positions::MRope(out))
            }
        }
    }

    /// `len` text tokens numbered from `start`, of the same kind as `self` (all axes equal).
    pub fn text_run(&self, start: u32, len: usize) -> Positions {
        let run: Vec<u32> = (start..start + len as u32).collect();
        match self {
            Positions::Linear(_) => Positions::Linear(run),
            Positions::MRope(_) => Positions::MRope([run.clone(), run.clone(), run]),
        }
    }

    /// The largest id on any axis.
    pub fn max(&self) -> Option<u32> {
        match self {
            Positions::Linear(p) => p.iter().copied().max(),
            Positions::MRope(p) => p.iter().flat_map(|a| a.iter().copied()).max(),
        }
    }

    /// The first axis's id of the last token (a text token's id on every axis).
    pub fn last(&self) -> Option<u32> {
        match self {
            Positions::Linear(p) => p.last().copied(),
            Positions::MRope(p) => p[0].last().copied(),
        }
    }

    /// Every id moved by `offset`; refuses to go below zero.
    pub fn shifted(&self, offset: i64) -> Result<Positions> {
        let shift = |p: &[u32]| {
            p.iter()
                .map(|&v| {
                    u32::try_from(v as i64 + offset)
                        .map_err(|_| Error::Internal(format!("position {v} shifted by {offset} is out of range")))
                })
                .collect::<Result<Vec<u32>>>()
        };
        Ok(match self {
            Positions::Linear(p) => Positions::Linear(shift(p)?),
            Positions::MRope(p) => Positions::MRope([shift(&p[0])?, shift(&p[1])?, shift(&p[2])?]),
        })
    }
}

/// Where an image's tokens sit in the unpruned decoder sequence: `prefix_len` tokens before them,
/// `n_slots` of them, the rest text. `unpruned` numbers all of it as the model would without pruning;
/// the position policy in `prune::positions` numbers what is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceLayout {
    pub unpruned: Positions,
    pub prefix_len: usize,
    pub n_slots: usize,
}

impl SequenceLayout {
    /// A 1-D sequence numbered 0, 1, 2, … (LLaVA's).
    pub fn linear(prefix_len: usize, n_slots: usize, suffix_len: usize) -> Self {
        let unpruned = Positions::Linear((0..(prefix_len + n_slots + suffix_len) as u32).collect());
        Self { unpruned, prefix_len, n_slots }
    }

    pub fn suffix_len(&self) -> usize {
        self.unpruned.len() - self.prefix_len - self.n_slots
    }
}

fn mixed() -> Error {
    Error::Internal("1-D and multimodal position ids mixed in one sequence".into())
}

/// What a method asks of the vision encoder beyond the evidence it always gives (the costly extras).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Patch-similarity features (Nüwa: the mean of the encoder's trailing hidden states).
    pub similarity: bool,
}

impl Needs {
    pub fn union(self, other: Needs) -> Needs {
        Needs { similarity: self.similarity || other.similarity }
    }
}

/// Per-slot saliency: the summary token's attention to each slot, summed over `heads` heads.
#[derive(Debug, Clone, PartialEq)]
pub struct Saliency {
    pub summed: Vec<f32>,
    pub heads: usize,
}

impl Saliency {
    /// The head mean.
    pub fn mean(&self) -> Vec<f32> {
        let heads = self.heads as f32;
        self.summed.iter().map(|s| s / heads).collect()
    }
}

/// One vision-encoder pass over an image, before any token reduction: what a model can tell a pruning
/// method. Everything beyond the layout and the features is optional; a method that needs what a model
/// does not give fails with a message naming both.
#[derive(Debug, Clone)]
pub struct VisionEvidence {
    /// The model family, for messages.
    pub model: &'static str,
    pub layout: VisualLayout,
    /// Projector input per slot, (N, vision hidden).
    pub features: Tensor,
    pub saliency: Option<Saliency>,
    /// Patch-similarity features per slot, (N, D'), when asked for ([`Needs::similarity`]).
    pub similarity: Option<Tensor>,
    /// Time spent on the similarity features: part of the cost of the method that uses them.
    pub similarity_ms: f64,
    /// Keys of the saliency layer averaged over heads, per slot: (N, head_dim).
    pub keys: Option<Tensor>,
    /// The summary ([CLS]) token in the projector's input space, (1, vision hidden).
    pub summary: Option<Tensor>,
    /// How the original image maps onto the model's input (absent for raw pixel values).
    pub geometry: Option<Geometry>,
    /// The slots in the order the encoder worked on them, when that differs from the sequence order
    /// (Qwen2.5-VL's attention windows): what released code that forgot to undo it saw.
    pub encoder_order: Option<Vec<usize>>,
    pub vision_ms: f64,
}

impl VisionEvidence {
    fn missing(&self, what: &str) -> Error {
        Error::Unsupported(format!("needs {what}; the {} vision encoder gives none", self.model))
    }

    pub fn saliency(&self) -> Result<&Saliency> {
        self.saliency.as_ref().ok_or_else(|| self.missing("a summary token's saliency"))
    }

    pub fn similarity(&self) -> Result<&Tensor> {
        self.similarity.as_ref().ok_or_else(|| self.missing("similarity features (encode with them asked for)"))
    }

    pub fn keys(&self) -> Result<&Tensor> {
        self.keys.as_ref().ok_or_else(|| self.missing("the saliency layer's keys"))
    }

    pub fn summary(&self) -> Result<&Tensor> {
        self.summary.as_ref().ok_or_else(|| self.missing("a [CLS] summary token"))
    }
}
