//! LLaMA decoder (Vicuna-7B in LLaVA-1.5), after transformers' `LlamaForCausalLM`.
//!
//! What differs from candle-transformers' llama: every token carries an explicit position id (RoPE is
//! gathered from a precomputed table, so a pruned sequence keeps its original positions), each layer has
//! its own KV cache (after a mid-stack cut the caches are ragged), and a [`TokenDropper`] can drop tokens
//! before chosen layers after reading the last query row's attention one layer earlier.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{embedding, kv_cache::KvCache, linear_b, rms_norm, Embedding, Linear, RmsNorm, VarBuilder};
use serde::Deserialize;

/// `LlamaConfig` as a hub `config.json` (or LLaVA's `text_config`) holds it; omitted keys take
/// transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: Option<usize>,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    /// transformers ≥ 5 moves `rope_theta` (and the scaling type) here.
    pub rope_parameters: Option<RopeParameters>,
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
}

fn default_hidden_size() -> usize {
    4096
}
fn default_intermediate_size() -> usize {
    11008
}
fn default_layers() -> usize {
    32
}
fn default_heads() -> usize {
    32
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_hidden_act() -> String {
    "silu".into()
}

impl Config {
    pub fn vocab_size(&self) -> usize {
        self.vocab_size.unwrap_or(32000)
    }
    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// Rejects values this implementation would otherwise silently compute wrongly.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "silu" {
            return Err(format!("text_config.hidden_act: only \"silu\" is supported, got {:?}", self.hidden_act));
        }
        for p in [&self.rope_parameters, &self.rope_scaling].into_iter().flatten() {
            if let Some(t) = &p.rope_type {
                if t != "default" {
                    return Err(format!("text_config rope type {t:?} is not supported (only \"default\")"));
                }
            }
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 && self.head_dim.is_none() {
            return Err(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads() != 0 {
            return Err(format!(
                "text_config.num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads()
            ));
        }
        Ok(())
    }
}

/// Drops tokens from the sequence in the middle of the decoder during prefill.
///
/// Before each layer in [`TokenDropper::cut_layers`] the decoder asks which sequence slots to keep,
/// passing the head-averaged softmax attention that the last query pays to every slot in the layer
/// before. Only that one row is read, so attention itself never has to be materialised for the caller.
pub trait TokenDropper {
    /// Layers (0-based, ≥ 1, ascending) before which tokens may be dropped.
    fn cut_layers(&self) -> Vec<usize>;
    /// Slots of the current sequence to keep, ascending. `last_row[j]` is the attention of the last
    /// query to slot `j` in layer `layer - 1`.
    fn keep(&mut self, layer: usize, last_row: &[f32]) -> crate::Result<Vec<usize>>;
}

/// RoPE cos/sin tables for every position, gathered per token by position id.
#[derive(Debug, Clone)]
struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    fn new(cfg: &Config, dtype: DType, dev: &Device) -> candle_core::Result<Self> {
        let half = cfg.head_dim() / 2;
        let theta = cfg.rope_theta();
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), dev)?;
        let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = pos.matmul(&inv_freq)?;
        Ok(Self { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? })
    }

    /// (cos, sin) of shape (T, head_dim/2) for the given position ids.
    fn gather(&self, positions: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.cos.index_select(positions, 0)?, self.sin.index_select(positions, 0)?))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads());
        Ok(Self {
            q_proj: linear_b(h, nh * hd, cfg.attention_bias, vb.pp("q_proj"))?,
            k_proj: linear_b(h, nkv * hd, cfg.attention_bias, vb.pp("k_proj"))?,
            v_proj: linear_b(h, nkv * hd, cfg.attention_bias, vb.pp("v_proj"))?,
            o_proj: linear_b(nh * hd, h, cfg.attention_bias, vb.pp("o_proj"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// Returns the attention output and, when `probe` is set, the last query row's attention
    /// probabilities averaged over heads (one value per key).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        probe: bool,
    ) -> candle_core::Result<(Tensor, Option<Vec<f32>>)> {
        let (b, t, _) = x.dims3()?;
        let split = |proj: &Linear, heads: usize| -> candle_core::Result<Tensor> {
            // (b, heads, t, head_dim)
            proj.forward(x)?.reshape((b, t, heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = candle_nn::rotary_emb::rope(&split(&self.q_proj, self.num_heads)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&split(&self.k_proj, self.num_kv_heads)?, cos, sin)?;
        let v = split(&self.v_proj, self.num_kv_heads)?;
        let (k, v) = cache.append(&k, &v)?;
        let k = repeat_kv(k, self.num_heads / self.num_kv_heads)?.contiguous()?;
        let v = repeat_kv(v, self.num_heads / self.num_kv_heads)?.contiguous()?;

        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        // Softmax in f32 whatever the weights' dtype, as transformers does.
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?;
        let probe_row = if probe {
            // (b, heads, keys) -> mean over heads of batch 0
            let row = probs.i((0, .., t - 1, ..))?.mean(0)?;
            Some(row.to_vec1::<f32>()?)
        } else {
            None
        };
        let out = probs.to_dtype(v.dtype())?.matmul(&v)?;
        let out = out.transpose(1, 2)?.reshape((b, t, self.num_heads * self.head_dim))?;
        Ok((self.o_proj.forward(&out)?, probe_row))
    }
}

fn repeat_kv(x: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, nkv, t, hd) = x.dims4()?;
    Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, nkv * n_rep, t, hd))
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear_b(h, i, cfg.mlp_bias, vb.pp("gate_proj"))?,
            up_proj: linear_b(h, i, cfg.mlp_bias, vb.pp("up_proj"))?,
            down_proj: linear_b(i, h, cfg.mlp_bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            input_layernorm: rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        probe: bool,
    ) -> candle_core::Result<(Tensor, Option<Vec<f32>>)> {
        let (attn, row) =
            self.self_attn.forward(&self.input_layernorm.forward(x)?, cos, sin, mask, cache, probe)?;
        let x = (x + attn)?;
        let x = (&x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?)?;
        Ok((x, row))
    }
}

/// Per-layer KV caches. After a mid-stack cut, layers hold different numbers of entries.
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<Option<KvCache>>,
    /// Room reserved per layer beyond its prefill length (the tokens still to be generated).
    reserve: usize,
}

impl Cache {
    /// Number of cached positions in each layer.
    pub fn layer_lengths(&self) -> Vec<usize> {
        self.layers.iter().map(|c| c.as_ref().map_or(0, |c| c.current_seq_len())).collect()
    }

    /// Bytes held by the cached keys and values (what is filled, not the reserve).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|c| {
                let k = c.k_cache();
                k.all_data().as_ref().map_or(0, |t| {
                    let per_pos = t.elem_count() / t.dim(k.dim()).unwrap_or(1).max(1);
                    2 * per_pos * k.current_seq_len() * t.dtype().size_in_bytes()
                })
            })
            .sum()
    }
}

/// The decoder with its embedding table and LM head.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryTable,
    cfg: Config,
    device: Device,
    dtype: DType,
}

impl Llama {
    /// `vb_model` points at the weights named `embed_tokens`, `layers.N.*`, `norm`; `vb_lm_head` at
    /// `lm_head` (ignored when the embeddings are tied).
    pub fn new(cfg: &Config, vb_model: VarBuilder, vb_lm_head: VarBuilder) -> candle_core::Result<Self> {
        let embed_tokens = embedding(cfg.vocab_size(), cfg.hidden_size, vb_model.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, vb_model.pp("layers").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb_model.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size(), vb_lm_head)?
        };
        let rotary = RotaryTable::new(cfg, vb_model.dtype(), vb_model.device())?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            cfg: cfg.clone(),
            device: vb_model.device().clone(),
            dtype: vb_model.dtype(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Token embeddings, (T, hidden).
    pub fn embed(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        self.embed_tokens.forward(&ids)
    }

    /// An empty cache with room for `reserve` generated tokens per layer after the prompt.
    pub fn new_cache(&self, reserve: usize) -> Cache {
        Cache { layers: vec![None; self.layers.len()], reserve }
    }

    /// Runs `embeds` (T, hidden) at `positions` through the decoder, appending to `cache`, and returns
    /// the logits (vocab,) of the last position in f32. Tokens are dropped before the layers the
    /// `dropper` names; generated tokens (T = 1 with a filled cache) are never dropped.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &[u32],
        cache: &mut Cache,
        mut dropper: Option<&mut dyn TokenDropper>,
    ) -> crate::Result<Tensor> {
        let cuts = dropper.as_ref().map(|d| d.cut_layers()).unwrap_or_default();
        if let Some(&bad) = cuts.iter().find(|&&l| l == 0 || l >= self.layers.len()) {
            return Err(crate::Error::InvalidArgument(format!(
                "cannot drop tokens before decoder layer {bad}: the layer must be in 1..{}",
                self.layers.len()
            )));
        }
        let mut x = embeds.unsqueeze(0)?;
        let mut positions = positions.to_vec();
        let mut rope = self.rotary.gather(&Tensor::new(positions.as_slice(), &self.device)?)?;
        let mut probe_row: Option<Vec<f32>> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if let (Some(d), Some(row)) = (dropper.as_deref_mut(), probe_row.take()) {
                let keep = d.keep(i, &row)?;
                if keep.iter().any(|&k| k >= positions.len()) || keep.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(crate::Error::InvalidArgument(format!(
                        "token dropper before layer {i} returned slots that are not ascending within 0..{}",
                        positions.len()
                    )));
                }
                let idx = Tensor::new(keep.iter().map(|&k| k as u32).collect::<Vec<_>>(), &self.device)?;
                x = x.index_select(&idx, 1)?;
                positions = keep.iter().map(|&k| positions[k]).collect();
                rope = self.rotary.gather(&Tensor::new(positions.as_slice(), &self.device)?)?;
            }
            let slot = &mut cache.layers[i];
            let kv = slot.get_or_insert_with(|| KvCache::new(2, positions.len() + cache.reserve));
            let past = kv.current_seq_len();
            let mask = causal_mask(positions.len(), past, self.dtype, &self.device)?;
            let probe = cuts.contains(&(i + 1)) && dropper.is_some();
            let (next, row) = layer.forward(&x, &rope.0, &rope.1, mask.as_ref(), kv, probe)?;
            x = next;
            probe_row = row;
        }
        let last = x.i((0, x.dim(1)? - 1))?.unsqueeze(0)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }
}

/// Additive mask for `t` new queries over `past + t` keys; `None` for a single query, which may see
/// everything cached.
fn causal_mask(t: usize, past: usize, dtype: DType, dev: &Device) -> candle_core::Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..past + t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, past + t), dev)?.to_dtype(dtype).map(Some)
}
