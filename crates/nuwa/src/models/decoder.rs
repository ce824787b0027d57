//! The LLaMA-style decoder (Vicuna-7B in LLaVA-1.5), after transformers' `LlamaForCausalLM`.
//!
//! What differs from candle-transformers' llama: every token carries an explicit position id (RoPE is
//! gathered from a precomputed table, so a pruned sequence keeps its original positions), each layer has
//! its own KV cache (after a mid-stack cut the caches are ragged), and a [`TokenDropper`] can drop, merge
//! or renumber tokens before chosen layers after probing the decoder ([`DecoderProbe`]).

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{embedding, kv_cache::KvCache, rms_norm, Embedding, RmsNorm, VarBuilder};

use super::attention::{self, Mask, Products};
use super::linear::{Linear, Weights};
use serde::Deserialize;

use crate::hooks::{DecoderProbe, TokenDropper};
use crate::layout::Positions;

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
    /// Biases on q, k and v only (Qwen2); set by the family, not read from LLaMA-style configs.
    #[serde(skip)]
    pub qkv_bias: bool,
    /// Multimodal RoPE: how many of the head's frequencies follow the temporal, height and width position
    /// (Qwen2-VL's `mrope_section`); `None` for 1-D RoPE.
    #[serde(skip)]
    pub mrope_section: Option<[usize; 3]>,
    /// How the layers' linears and the LM head hold their weights, chosen at load (`--dtype`,
    /// `--quantize`), not read.
    #[serde(skip)]
    pub weights: Weights,
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
        self.rope_parameters.as_ref().and_then(|p| p.rope_theta).or(self.rope_theta).unwrap_or(10000.0)
    }

    /// Rejects values this implementation would otherwise silently compute wrongly.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // Values that would otherwise run and produce NaN or nothing.
        let theta = self.rope_theta();
        if !(theta > 0.0 && theta.is_finite()) {
            return Err(format!("text_config.rope_theta must be a positive number, got {theta}"));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(format!("text_config.rms_norm_eps must be a positive number, got {}", self.rms_norm_eps));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size()),
        ] {
            if v == 0 {
                return Err(format!("text_config.{name} must be at least 1"));
            }
        }
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
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads) && self.head_dim.is_none()
        {
            return Err(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads()) {
            return Err(format!(
                "text_config.num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads()
            ));
        }
        Ok(())
    }
}

/// RoPE cos/sin for position ids: 1-D from a table of every position; multimodal (t, h, w) ids
/// computed per token, each frequency following the axis its section names.
#[derive(Debug, Clone)]
struct RotaryTable {
    /// (max positions, head_dim/2); absent for multimodal RoPE, whose tables would be 3× as large.
    table: Option<(Tensor, Tensor)>,
    inv_freq: Vec<f32>,
    mrope_section: Option<[usize; 3]>,
    dtype: DType,
}

impl RotaryTable {
    fn new(cfg: &Config, dtype: DType, dev: &Device) -> candle_core::Result<Self> {
        let half = cfg.head_dim() / 2;
        let theta = cfg.rope_theta();
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) as f32).collect();
        let table = match cfg.mrope_section {
            Some(_) => None,
            None => {
                let freqs = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
                    .to_dtype(DType::F32)?
                    .reshape((cfg.max_position_embeddings, 1))?
                    .matmul(&Tensor::from_vec(inv_freq.clone(), (1, half), dev)?)?;
                Some((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
            }
        };
        Ok(Self { table, inv_freq, mrope_section: cfg.mrope_section, dtype })
    }

    /// (cos, sin) of shape (T, head_dim/2) for the given position ids.
    fn gather(&self, positions: &Positions, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let axes: [&[u32]; 3] = match positions {
            Positions::Linear(p) => match &self.table {
                Some((cos, sin)) => {
                    let idx = Tensor::new(p.as_slice(), dev)?;
                    return Ok((cos.index_select(&idx, 0)?, sin.index_select(&idx, 0)?));
                }
                // Text under multimodal RoPE: the same id on every axis.
                None => [p, p, p],
            },
            Positions::MRope(p) => [&p[0], &p[1], &p[2]],
        };
        let section = self.mrope_section.unwrap_or([self.inv_freq.len(), 0, 0]);
        let axis_of: Vec<usize> = (0..self.inv_freq.len())
            .map(|i| usize::from(i >= section[0]) + usize::from(i >= section[0] + section[1]))
            .collect();
        let t = axes[0].len();
        let mut angles = Vec::with_capacity(t * self.inv_freq.len());
        for (k, _) in axes[0].iter().enumerate() {
            angles.extend(self.inv_freq.iter().zip(&axis_of).map(|(&f, &a)| axes[a][k] as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (t, self.inv_freq.len()), dev)?;
        Ok((angles.cos()?.to_dtype(self.dtype)?, angles.sin()?.to_dtype(self.dtype)?))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` fused.
    qkv: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    products: Products,
    /// What the KV cache holds keys and values in ([`crate::models::linear::Weights::cache_dtype`]).
    cache_dtype: DType,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads());
        Ok(Self {
            qkv: Linear::load_fused(
                h,
                &[(nh * hd, vb.pp("q_proj")), (nkv * hd, vb.pp("k_proj")), (nkv * hd, vb.pp("v_proj"))],
                cfg.attention_bias || cfg.qkv_bias,
                cfg.weights,
            )?,
            o_proj: Linear::load(nh * hd, h, cfg.attention_bias, cfg.weights, vb.pp("o_proj"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            products: Products::for_weights(&cfg.weights),
            cache_dtype: cfg.weights.cache_dtype(vb.dtype(), vb.device().is_cpu()),
        })
    }

    /// (b, heads, T, head_dim) queries and keys with RoPE applied, and the values.
    fn qkv(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv) = (self.num_heads, self.num_kv_heads);
        // (b, t, heads of q, k and v, head_dim); each part is one copy into (b, heads, t, head_dim).
        let qkv = self.qkv.forward(x)?.reshape((b, t, nh + 2 * nkv, self.head_dim))?;
        let split = |first: usize, heads: usize| qkv.narrow(2, first, heads)?.transpose(1, 2)?.contiguous();
        let q = candle_nn::rotary_emb::rope(&split(0, nh)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&split(nh, nkv)?, cos, sin)?;
        Ok((q, k, split(nh + nkv, nkv)?))
    }

    /// Softmax attention probabilities in f32 (transformers' choice whatever the weights' dtype).
    fn probs(&self, q: &Tensor, k: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)
    }

    /// Returns the attention output and the probabilities of the `probe_rows` queries when any are asked
    /// for: averaged over heads (rows, keys), or per head (heads, rows, keys).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        probe: &ProbeRows,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x.dims3()?;
        let (q, k, v) = self.qkv(x, cos, sin)?;
        let (k, v) = cache.append(&k.to_dtype(self.cache_dtype)?, &v.to_dtype(self.cache_dtype)?)?;
        if probe.rows.is_empty() && attention::supports(&q) {
            let (tq, tk) = (q.dim(2)?, k.dim(2)?);
            let mask = if mask.is_some() { Mask::Causal { past: tk - tq } } else { Mask::None };
            // The cache's views go in as they are (one batch), its kv heads shared by the query heads
            // inside the op: no copy of the cache per step.
            let flat = |x: &Tensor| match b {
                1 => x.squeeze(0),
                _ => x.reshape((b * x.dim(1)?, x.dim(2)?, self.head_dim)),
            };
            let scale = 1.0 / (self.head_dim as f64).sqrt();
            let out = attention::attention(&flat(&q)?, &flat(&k)?, &flat(&v)?, scale, mask, self.products)?;
            let out = out.reshape((b, self.num_heads, t, self.head_dim))?.transpose(1, 2)?;
            return Ok((self.o_proj.forward(&out.reshape((b, t, self.num_heads * self.head_dim))?)?, None));
        }
        let n_rep = self.num_heads / self.num_kv_heads;
        let k = repeat_kv(k.to_dtype(q.dtype())?, n_rep)?.contiguous()?;
        let v = repeat_kv(v.to_dtype(q.dtype())?, n_rep)?.contiguous()?;
        let probs = self.probs(&q, &k, mask)?;
        let rows = if probe.rows.is_empty() { None } else { Some(probe_rows(&probs, probe)?) };
        let out = probs.to_dtype(v.dtype())?.matmul(&v)?;
        let out = out.transpose(1, 2)?.reshape((b, t, self.num_heads * self.head_dim))?;
        Ok((self.o_proj.forward(&out)?, rows))
    }

    /// The head-averaged attention of `rows` over the whole input `x`, without touching the cache.
    fn preview(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, rows: &[usize]) -> candle_core::Result<Tensor> {
        let (q, k, _) = self.qkv(x, cos, sin)?;
        let k = repeat_kv(k, self.num_heads / self.num_kv_heads)?.contiguous()?;
        let idx = crate::index_tensor(rows, x.device())?;
        let q = q.index_select(&idx, 2)?;
        let t = x.dim(1)?;
        // Causal: query row r sees keys 0..=r.
        let mask: Vec<f32> =
            rows.iter().flat_map(|&r| (0..t).map(move |j| if j > r { f32::NEG_INFINITY } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (rows.len(), t), x.device())?.to_dtype(q.dtype())?;
        let probs = self.probs(&q, &k, Some(&mask))?;
        probs.i(0)?.mean(0)
    }
}

/// Which query rows of a layer's attention to hand to the next cut, and whether per head.
#[derive(Debug, Default)]
struct ProbeRows {
    rows: Vec<usize>,
    per_head: bool,
}

/// The asked-for rows of (b, heads, T, keys) probabilities, batch 0: (rows, keys) averaged over heads,
/// or (heads, rows, keys).
fn probe_rows(probs: &Tensor, probe: &ProbeRows) -> candle_core::Result<Tensor> {
    let idx = crate::index_tensor(&probe.rows, probs.device())?;
    let picked = probs.i(0)?.index_select(&idx, 1)?;
    if probe.per_head {
        Ok(picked)
    } else {
        picked.mean(0)
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
    /// `gate_proj` and `up_proj` fused.
    gate_up: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up: Linear::load_fused(
                h,
                &[(i, vb.pp("gate_proj")), (i, vb.pp("up_proj"))],
                cfg.mlp_bias,
                cfg.weights,
            )?,
            down_proj: Linear::load(i, h, cfg.mlp_bias, cfg.weights, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.down_proj.forward(&super::activation::silu_mul_halves(&self.gate_up.forward(x)?)?)
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
        probe: &ProbeRows,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (attn, rows) = self.self_attn.forward(&self.input_layernorm.forward(x)?, cos, sin, mask, cache, probe)?;
        let x = (x + attn)?;
        let x = (&x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?)?;
        Ok((x, rows))
    }
}

/// Per-layer KV caches. After a mid-stack cut, layers hold different numbers of entries.
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<Option<KvCache>>,
    /// Room reserved per layer beyond its prefill length (the tokens still to be generated).
    reserve: usize,
    /// Per layer, what to add to a generated token's position: a cut that renumbers the sequence
    /// shifts every later layer's positions, and decoding continues each layer's own numbering.
    position_offsets: Vec<i64>,
}

impl Cache {
    /// Number of cached positions in each layer.
    pub fn layer_lengths(&self) -> Vec<usize> {
        self.layers.iter().map(|c| c.as_ref().map_or(0, |c| c.current_seq_len())).collect()
    }

    /// Makes room for `tokens` more entries in every layer, so that decoding never regrows a layer's
    /// cache (a regrowth copies the layer into one twice its size, mid-decode). A filled layer short of
    /// room is copied once into one that has it; layers not yet filled are made with it.
    pub fn reserve(&mut self, tokens: usize) -> candle_core::Result<()> {
        self.reserve = self.reserve.max(tokens);
        for layer in self.layers.iter_mut().flatten() {
            let len = layer.current_seq_len();
            if layer.k_cache().max_seq_len() >= len + tokens {
                continue;
            }
            if let (Some(k), Some(v)) = (layer.k()?, layer.v()?) {
                let mut grown = KvCache::new(2, len + tokens);
                grown.append(&k, &v)?;
                *layer = grown;
            }
        }
        Ok(())
    }

    /// Room for more entries in each layer before its cache must grow.
    pub fn room(&self) -> Vec<usize> {
        self.layers.iter().map(|c| c.as_ref().map_or(0, |c| c.k_cache().max_seq_len() - c.current_seq_len())).collect()
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
pub struct Decoder {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryTable,
    cfg: Config,
    device: Device,
    dtype: DType,
}

impl Decoder {
    /// `vb_model` points at the weights named `embed_tokens`, `layers.N.*`, `norm`; `vb_lm_head` at
    /// `lm_head` (ignored when the embeddings are tied).
    pub fn new(cfg: &Config, vb_model: VarBuilder, vb_lm_head: VarBuilder) -> candle_core::Result<Self> {
        // The table is read and held in the weights' dtype; looked-up rows are widened to the activations'.
        let table = vb_model.pp("embed_tokens");
        let table = cfg.weights.dtype.map_or(table.clone(), |d| table.to_dtype(d));
        let embed_tokens = embedding(cfg.vocab_size(), cfg.hidden_size, table)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, vb_model.pp("layers").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb_model.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            // The head is a packed (or quantised) copy of the table the lookup reads.
            let tied = embed_tokens.embeddings().clone();
            Linear::held_as(tied, None, cfg.weights)?
        } else {
            Linear::load(cfg.hidden_size, cfg.vocab_size(), false, cfg.weights, vb_lm_head)?
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

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token embeddings, (T, hidden).
    pub fn embed(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        self.embed_tokens.forward(&ids)?.to_dtype(self.dtype)
    }

    /// An empty cache with room for `reserve` generated tokens per layer after the prompt.
    pub fn new_cache(&self, reserve: usize) -> Cache {
        Cache { layers: vec![None; self.layers.len()], reserve, position_offsets: vec![0; self.layers.len()] }
    }

    /// Runs `embeds` (T, hidden) at `positions` through the decoder, appending to `cache`, and returns
    /// the logits (vocab,) of the last position in f32. The `dropper` may change the sequence before the
    /// layers it names (prefill only: a single generated token with a filled cache is never dropped).
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &Positions,
        cache: &mut Cache,
        mut dropper: Option<&mut dyn TokenDropper>,
    ) -> crate::Result<Tensor> {
        let cuts = dropper.as_ref().map(|d| d.cut_layers()).unwrap_or_default();
        if let Some(&bad) = cuts.iter().find(|&&l| l == 0 || l >= self.layers.len()) {
            return Err(crate::Error::Internal(format!(
                "cannot change the sequence before decoder layer {bad}: the layer must be in 1..{}",
                self.layers.len()
            )));
        }
        if let Some(d) = dropper.as_deref_mut() {
            d.start(embeds)?;
        }
        let bidirectional = dropper.as_ref().map(|d| d.bidirectional_layers()).unwrap_or_default();
        let input_last = positions.last().ok_or_else(|| crate::Error::Internal("empty sequence".into()))?;
        let mut x = embeds.unsqueeze(0)?;
        let mut positions = positions.clone();
        // RoPE tables and the mask are rebuilt only when the sequence or its numbering changes.
        let mut rope: Option<((Tensor, Tensor), i64)> = None;
        let mut mask: Option<(Option<Tensor>, (usize, usize, bool))> = None;
        let mut prev_rows: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(d) = dropper.as_deref_mut().filter(|_| cuts.contains(&i)) {
                let hidden = x.squeeze(0)?;
                let probe = Probe {
                    decoder: self,
                    layer: i,
                    hidden: &hidden,
                    positions: &positions,
                    prev_rows: prev_rows.as_ref(),
                    cache,
                };
                let cut = d.cut(&probe)?;
                let (next_x, next_positions) = apply_cut(&hidden, &positions, cut, i)?;
                x = next_x.unsqueeze(0)?;
                positions = next_positions;
                let offset = positions.last().expect("the last token is always kept") as i64 - input_last as i64;
                cache.position_offsets[i..].fill(offset);
                rope = None;
            }
            let probe = match dropper.as_ref() {
                Some(d) if cuts.contains(&(i + 1)) => {
                    ProbeRows { rows: d.attention_rows(i + 1, positions.len()), per_head: d.attention_per_head(i + 1) }
                }
                _ => ProbeRows::default(),
            };
            let kv = cache.layers[i].get_or_insert_with(|| KvCache::new(2, positions.len() + cache.reserve));
            let past = kv.current_seq_len();
            // Tokens appended to a filled cache continue that layer's own numbering.
            let offset = if past > 0 { cache.position_offsets[i] } else { 0 };
            if rope.as_ref().map(|r| r.1) != Some(offset) {
                rope = Some((self.rope_at(&positions, offset)?, offset));
            }
            let key = (positions.len(), past, past == 0 && bidirectional.contains(&i));
            if mask.as_ref().map(|m| m.1) != Some(key) {
                let m = if key.2 { None } else { causal_mask(key.0, key.1, self.dtype, &self.device)? };
                mask = Some((m, key));
            }
            let (cos, sin) = &rope.as_ref().expect("built above").0;
            let m = mask.as_ref().expect("built above").0.as_ref();
            let (next, rows) = layer.forward(&x, cos, sin, m, kv, &probe)?;
            x = next;
            prev_rows = rows;
        }
        let last = x.i((0, x.dim(1)? - 1))?.unsqueeze(0)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// RoPE tables for `positions` shifted by `offset`.
    fn rope_at(&self, positions: &Positions, offset: i64) -> crate::Result<(Tensor, Tensor)> {
        let shifted = positions.shifted(offset)?;
        if matches!(shifted, Positions::MRope(_)) && self.cfg.mrope_section.is_none() {
            return Err(crate::Error::Unsupported("this decoder uses 1-D RoPE: multimodal position ids given".into()));
        }
        if let Some(max) = shifted.max() {
            if max as usize >= self.cfg.max_position_embeddings {
                return Err(crate::Error::ContextOverflow {
                    needed: max as usize + 1,
                    context: self.cfg.max_position_embeddings,
                });
            }
        }
        Ok(self.rotary.gather(&shifted, &self.device)?)
    }
}

/// The decoder's side of [`DecoderProbe`], valid before one layer during prefill.
struct Probe<'a> {
    decoder: &'a Decoder,
    layer: usize,
    hidden: &'a Tensor,
    positions: &'a Positions,
    prev_rows: Option<&'a Tensor>,
    cache: &'a Cache,
}

impl DecoderProbe for Probe<'_> {
    fn layer(&self) -> usize {
        self.layer
    }
    fn hidden(&self) -> &Tensor {
        self.hidden
    }
    fn positions(&self) -> &Positions {
        self.positions
    }
    fn prev_attention(&self) -> Option<&Tensor> {
        self.prev_rows
    }
    fn preview_attention(&self, rows: &[usize]) -> crate::Result<Tensor> {
        let block = &self.decoder.layers[self.layer];
        let (cos, sin) = self.decoder.rope_at(self.positions, 0)?;
        let x = block.input_layernorm.forward(&self.hidden.unsqueeze(0)?)?;
        Ok(block.self_attn.preview(&x, &cos, &sin, rows)?)
    }
    fn final_norm(&self) -> crate::Result<Tensor> {
        Ok(self.decoder.norm.forward(self.hidden)?)
    }
    fn prev_keys(&self) -> crate::Result<Tensor> {
        let attn = &self.decoder.layers[self.layer - 1].self_attn;
        let kv = self.cache.layers[self.layer - 1].as_ref().expect("the previous layer has run");
        let k = kv.k()?.expect("the previous layer cached its keys").to_dtype(self.decoder.dtype)?;
        let k = repeat_kv(k, attn.num_heads / attn.num_kv_heads)?;
        // (1, heads, T, d) -> (T, heads·d)
        let (_, h, t, d) = k.dims4()?;
        Ok(k.squeeze(0)?.transpose(0, 1)?.reshape((t, h * d))?)
    }
}

/// The sequence after a cut: kept rows, inserted rows, and their positions.
fn apply_cut(
    hidden: &Tensor,
    positions: &Positions,
    cut: crate::hooks::Cut,
    layer: usize,
) -> crate::Result<(Tensor, Positions)> {
    let t = positions.len();
    let bad = |m: String| crate::Error::Internal(format!("token dropper before layer {layer}: {m}"));
    if cut.keep.iter().any(|&k| k >= t) || cut.keep.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad(format!("kept slots must be ascending within 0..{t}")));
    }
    if cut.keep.last() != Some(&(t - 1)) {
        return Err(bad("the last token must be kept: it produces the logits".into()));
    }
    let idx = crate::index_tensor(&cut.keep, hidden.device())?;
    let mut x = hidden.index_select(&idx, 0)?;
    let mut kept: Vec<usize> = cut.keep.clone();
    if let Some((at, rows)) = &cut.insert {
        if *at > cut.keep.len() {
            return Err(bad(format!("insertion index {at} is past the {} kept slots", cut.keep.len())));
        }
        x = Tensor::cat(&[&x.narrow(0, 0, *at)?, rows, &x.narrow(0, *at, cut.keep.len() - at)?], 0)?;
        // Inserted rows take the position of the kept slot before them until renumbered.
        let fill = if *at == 0 { kept[0] } else { kept[at - 1] };
        kept.splice(at..at, std::iter::repeat_n(fill, rows.dim(0)?));
    }
    let kept_positions = positions.select(&kept);
    let positions = match cut.positions {
        Some(p) if p.len() == x.dim(0)? => p,
        Some(p) => return Err(bad(format!("{} positions for {} tokens", p.len(), x.dim(0)?))),
        None => kept_positions,
    };
    Ok((x, positions))
}

/// Additive mask for `t` new queries over `past + t` keys; `None` for a single query, which may see
/// everything cached.
fn causal_mask(t: usize, past: usize, dtype: DType, dev: &Device) -> candle_core::Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..past + t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, past + t), dev)?.to_dtype(dtype).map(Some)
}
