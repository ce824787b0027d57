//! The contract between the decoder and anything that drops tokens in the middle of it. The decoder
//! implements [`DecoderProbe`]; pruning methods implement [`TokenDropper`]. Neither knows the other.

use crate::layout::Positions;
use candle_core::Tensor;

/// What a dropper may read before decoder layer `layer` runs. Everything beyond the hidden states is
/// computed on demand, for the rows asked for, so no attention map is ever stored.
pub trait DecoderProbe {
    /// The layer about to run (0-based).
    fn layer(&self) -> usize;
    /// Hidden states entering the layer, (T, hidden).
    fn hidden(&self) -> &Tensor;
    /// Position ids of the current sequence.
    fn positions(&self) -> &Positions;
    /// The rows [`TokenDropper::attention_rows`] asked for of layer `layer − 1`'s softmax attention, f32:
    /// averaged over heads (rows, T), or per head (heads, rows, T) when
    /// [`TokenDropper::attention_per_head`] says so.
    fn prev_attention(&self) -> Option<&Tensor>;
    /// This layer's attention for the given query rows, computed on its input before it runs (RoPE at
    /// the current positions, causal), averaged over heads: (rows, T), f32.
    fn preview_attention(&self, rows: &[usize]) -> crate::Result<Tensor>;
    /// The decoder's final RMSNorm applied to the hidden states entering the layer, (T, hidden).
    fn final_norm(&self) -> crate::Result<Tensor>;
    /// Layer `layer − 1`'s post-RoPE keys, heads concatenated (key heads repeated for grouped-query
    /// attention): (T, heads · head_dim).
    fn prev_keys(&self) -> crate::Result<Tensor>;
}

/// How the sequence continues after a cut.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Slots of the current sequence to keep, ascending.
    pub keep: Vec<usize>,
    /// New rows inserted into the kept sequence at this index (e.g. merged tokens), (m, hidden).
    pub insert: Option<(usize, Tensor)>,
    /// Position ids of the resulting sequence; `None` keeps the kept slots' own positions.
    pub positions: Option<Positions>,
}

/// Drops (and possibly merges) tokens before chosen decoder layers during prefill. Generated tokens
/// are never dropped; each layer's cache keeps what its prefill saw.
pub trait TokenDropper {
    /// Layers (0-based, ≥ 1, ascending) before which the sequence may change.
    fn cut_layers(&self) -> Vec<usize>;
    /// Sees the decoder's input embeddings (T, hidden) once, before layer 0 of the prefill.
    fn start(&mut self, _embeds: &Tensor) -> crate::Result<()> {
        Ok(())
    }
    /// Query rows of layer `layer − 1`'s attention to hand over in [`DecoderProbe::prev_attention`];
    /// by default the last one.
    fn attention_rows(&self, _layer: usize, seq_len: usize) -> Vec<usize> {
        vec![seq_len - 1]
    }
    /// Whether those rows are handed over per head rather than averaged over heads.
    fn attention_per_head(&self, _layer: usize) -> bool {
        false
    }
    /// Layers that attend without the causal mask during prefill (to reproduce released code whose fused
    /// attention dropped it); decoding a single token is unaffected.
    fn bidirectional_layers(&self) -> Vec<usize> {
        Vec::new()
    }
    fn cut(&mut self, probe: &dyn DecoderProbe) -> crate::Result<Cut>;
}
