//! What `nuwa bench` and `cargo bench` measure with: the paper's FLOP model, random-weight models with
//! real shapes (no checkpoint needed), one timed pass of the pipeline, and the process's memory.
//!
//! # The FLOP model
//! The paper (Table 6) counts the decoder's prefill work on the vision tokens only, per layer
//! `8·S·H² + 4·S²·H + 4·S·H·I` FLOPs (FastV's model: Q/K/V/O projections, scores and weighted sum, the
//! MLP, two FLOPs per multiply-add), with `S` the number of vision tokens entering that layer, summed
//! over the layers, in units of 10¹² FLOPs. For LLaVA-1.5-7B (H = 4096, I = 11008, 32 layers):
//! unpruned `32 · f(576)` = 5.972152 TFLOPs; Nüwa at budget 64 `16 · f(112) + 16 · f(16)` = 0.6476005 TFLOPs.
//! The paper prints 5.973 and 0.6476: the second matches to every printed digit, the first is 0.014 %
//! above what the formula gives (no token count, layer split or unit makes both round to the paper's
//! digits; see docs/PERFORMANCE.md). [`llm_flops`] also gives a total that counts the text tokens
//! (`S` = prefix + vision + suffix in every layer). With grouped-query attention (Qwen2.5-VL: 4 KV heads
//! of 28) the K and V projections are narrower, see [`layer_flops`]. The vision encoder's FLOPs are not
//! counted: pruning happens after it, so they are the same in every configuration.

use crate::checkpoint::Checkpoint;
use crate::engine::{Engine, SessionOptions};
use crate::layout::VisualLayout;
use crate::models::{clip, decoder, llava, llava_next, qwen2_5_vl, LoadOptions, VisionLanguageModel};
use crate::prompt::PromptTokens;
use crate::prune::Method;
use crate::{Error, Result, Sampling};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use std::time::Instant;

// ---------------------------------------------------------------------------------------------------
// FLOP model
// ---------------------------------------------------------------------------------------------------

/// Prefill FLOPs of one decoder layer of `cfg` over `s` tokens: `4·S·H·(Q + KV) + 4·S²·Q + 4·S·H·I` with
/// Q = heads · head_dim and KV = KV heads · head_dim (the Q/O and the K/V projections, scores and
/// weighted sum, the MLP). Without grouped-query attention Q = KV = H: the paper's
/// `8·S·H² + 4·S²·H + 4·S·H·I`.
pub fn layer_flops(s: usize, cfg: &decoder::Config) -> f64 {
    let (s, h, i, hd) = (s as u128, cfg.hidden_size as u128, cfg.intermediate_size as u128, cfg.head_dim() as u128);
    let (q, kv) = (cfg.num_attention_heads as u128 * hd, cfg.num_key_value_heads() as u128 * hd);
    (4 * s * h * (q + kv) + 4 * s * s * q + 4 * s * h * i) as f64
}

/// How many vision tokens each decoder layer sees under a method.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenSchedule {
    /// Vision tokens entering the decoder (stage 1's K1; every patch without stage 1).
    pub k1: usize,
    /// Vision tokens after the mid-stack cut, when there is one.
    pub k2: Option<usize>,
    /// Decoder layer before which the cut happens.
    pub cut_layer: Option<usize>,
    /// Decoder depth.
    pub layers: usize,
    /// Vision tokens entering each layer (several cuts for multi-stage methods).
    pub per_layer: Vec<usize>,
}

impl TokenSchedule {
    /// Resolves `method` for `cfg`'s image laid out as `layout` exactly as the pipeline does (budget or
    /// keep-ratio rule of the family, stage-2 layer, no cut when K2 ≥ K1); errors for values the
    /// pipeline would reject.
    pub fn new(cfg: &BenchConfig, layout: &VisualLayout, method: &Method) -> Result<Self> {
        method.validate()?;
        let per_layer = method.vision_tokens_per_layer(cfg.family(), layout, cfg.decoder().num_hidden_layers)?;
        let k1 = per_layer.first().copied().unwrap_or(0);
        let cut_layer = per_layer.iter().position(|&t| t != k1);
        Ok(Self {
            k1,
            k2: cut_layer.map(|_| *per_layer.last().expect("non-empty")),
            cut_layer,
            layers: per_layer.len(),
            per_layer,
        })
    }

    /// Vision tokens in decoder layer `l`.
    pub fn tokens_at(&self, l: usize) -> usize {
        self.per_layer[l]
    }

    /// Mean number of vision tokens over the layers (the paper's "budget").
    pub fn mean_tokens(&self) -> f64 {
        (0..self.layers).map(|l| self.tokens_at(l)).sum::<usize>() as f64 / self.layers.max(1) as f64
    }

    /// KV-cache entries summed over layers for a prompt of `text` tokens (prefix + suffix).
    pub fn kv_entries(&self, text: usize) -> usize {
        (0..self.layers).map(|l| self.tokens_at(l) + text).sum()
    }
}

/// The paper's FLOP model for one configuration.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Flops {
    /// Vision tokens only (the paper's number), FLOPs.
    pub vision_only: f64,
    /// Every prompt token (prefix + vision + suffix in each layer), FLOPs.
    pub total: f64,
}

impl Flops {
    pub fn vision_only_tflops(&self) -> f64 {
        self.vision_only / 1e12
    }
    pub fn total_tflops(&self) -> f64 {
        self.total / 1e12
    }
}

/// Prefill FLOPs of the decoder under `schedule`, with `text_tokens` text tokens (prefix + suffix)
/// for the total.
pub fn llm_flops(cfg: &decoder::Config, schedule: &TokenSchedule, text_tokens: usize) -> Flops {
    let mut f = Flops { vision_only: 0.0, total: 0.0 };
    for l in 0..schedule.layers {
        let s = schedule.tokens_at(l);
        f.vision_only += layer_flops(s, cfg);
        f.total += layer_flops(s + text_tokens, cfg);
    }
    f
}

// ---------------------------------------------------------------------------------------------------
// Presets: real shapes, random weights
// ---------------------------------------------------------------------------------------------------

/// Model shapes the benchmark can build with random weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The test fixture's shapes (tests/fixtures/tiny-llava-1.5): real 24×24 grid and depths, tiny widths.
    Tiny,
    /// CLIP ViT-L/14-336 + Vicuna-7B, as LLaVA-1.5-7B.
    Llava15_7b,
    /// The same networks with LLaVA-NeXT's anyres views and newline tokens (llava-v1.6-vicuna-7b).
    LlavaNext7b,
    /// Qwen2.5-VL-7B-Instruct: the windowed ViT (32 × 1280) and the Qwen2 decoder (28 × 3584, GQA 28/4).
    Qwen25Vl7b,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Tiny, Preset::Llava15_7b, Preset::LlavaNext7b, Preset::Qwen25Vl7b];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Llava15_7b => "llava-1.5-7b",
            Preset::LlavaNext7b => "llava-next-7b",
            Preset::Qwen25Vl7b => "qwen2.5-vl-7b",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|p| p.name()).collect();
            Error::invalid("preset", format!("{name:?} is unknown: expected one of {}", names.join(", ")))
        })
    }

    /// The model (the hub `config.json` this preset stands for) with the image it encodes by default.
    pub fn config(self) -> BenchConfig {
        // (hidden, intermediate, heads, layers) of the decoder, then of the CLIP tower.
        let llava = |text: [usize; 4], vision: [usize; 4]| {
            let json = serde_json::json!({
                "image_token_index": 32000, "projector_hidden_act": "gelu", "vocab_size": 32064,
                "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                "text_config": {
                    "hidden_size": text[0], "intermediate_size": text[1], "num_attention_heads": text[2],
                    "num_key_value_heads": text[2], "num_hidden_layers": text[3], "max_position_embeddings": 4096,
                    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "vocab_size": 32064
                },
                "vision_config": {
                    "hidden_size": vision[0], "image_size": 336, "intermediate_size": vision[1],
                    "num_attention_heads": vision[2], "num_hidden_layers": vision[3], "patch_size": 14,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
                }
            });
            llava::Config::from_json(&json.to_string()).expect("preset configs are valid")
        };
        match self {
            Preset::Tiny => BenchConfig::Llava { config: llava([64, 172, 4, 32], [32, 64, 4, 24]), pinpoints: None },
            Preset::Llava15_7b | Preset::LlavaNext7b => BenchConfig::Llava {
                config: llava([4096, 11008, 32, 32], [1024, 4096, 16, 24]),
                pinpoints: (self == Preset::LlavaNext7b).then(|| llava_next::config::DEFAULT_PINPOINTS.to_vec()),
            },
            Preset::Qwen25Vl7b => BenchConfig::Qwen {
                config: qwen2_5_vl::Config::from_json(
                    &serde_json::json!({
                        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
                        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 152064,
                        "tie_word_embeddings": false, "hidden_act": "silu", "use_sliding_window": false,
                        "rope_scaling": { "type": "mrope", "mrope_section": [16, 24, 24] },
                        "vision_config": {
                            "depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420,
                            "out_hidden_size": 3584, "patch_size": 14, "temporal_patch_size": 2,
                            "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                            "hidden_act": "silu", "in_chans": 3
                        }
                    })
                    .to_string(),
                )
                .expect("preset configs are valid"),
                processor: qwen2_5_vl::PreprocessConfig::default(),
                image: QWEN_BENCH_IMAGE,
            },
        }
    }
}

/// The image (width, height) a Qwen2.5-VL benchmark encodes unless told otherwise: smart-resized to
/// 1008×756, 54×72 patches, 27×36 = 972 merged tokens.
pub const QWEN_BENCH_IMAGE: (u32, u32) = (1000, 750);

/// What a benchmark builds or loads: a family's configuration and the image it encodes.
#[derive(Debug, Clone)]
pub enum BenchConfig {
    /// LLaVA-1.5 on one 336×336 view; with `pinpoints`, LLaVA-NeXT over the same networks on a
    /// [`ANYRES_BENCH_SIDE`]-pixel square image.
    Llava { config: llava::Config, pinpoints: Option<Vec<[u32; 2]>> },
    /// Qwen2.5-VL on an `image` = (width, height) image, smart-resized as `processor` says.
    Qwen { config: qwen2_5_vl::Config, processor: qwen2_5_vl::PreprocessConfig, image: (u32, u32) },
}

impl BenchConfig {
    /// The configuration of a checkpoint of any supported family (Qwen2.5-VL on [`QWEN_BENCH_IMAGE`]).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let family = crate::models::detect(ckpt)?.name;
        if family == qwen2_5_vl::FAMILY.name {
            return Ok(BenchConfig::Qwen {
                config: qwen2_5_vl::Config::from_checkpoint(ckpt)?,
                processor: qwen2_5_vl::checkpoint_processor(ckpt)?,
                image: QWEN_BENCH_IMAGE,
            });
        }
        let pinpoints = (family == llava_next::FAMILY.name)
            .then(|| llava_next::Config::from_json(&ckpt.config_text).map(|c| c.pinpoints))
            .transpose()
            .map_err(|m| Error::config(&ckpt.config_path, m))?;
        Ok(BenchConfig::Llava { config: llava::Config::from_checkpoint(ckpt)?, pinpoints })
    }

    /// The same model on a `width`×`height` image; only Qwen2.5-VL takes images of any size.
    pub fn with_image_size(self, width: u32, height: u32) -> Result<Self> {
        match self {
            BenchConfig::Qwen { config, processor, .. } => {
                let cfg = BenchConfig::Qwen { config, processor, image: (width, height) };
                bench_layout(&cfg)?;
                Ok(cfg)
            }
            BenchConfig::Llava { .. } => Err(Error::invalid(
                "image_size",
                "applies to Qwen2.5-VL, which resizes images freely; LLaVA encodes fixed 336-pixel views \
                 (LLaVA-NeXT: a 672×672 image)",
            )),
        }
    }

    /// The model family's name, as [`crate::models::VisionLanguageModel::family`] gives it.
    pub fn family(&self) -> &'static str {
        match self {
            BenchConfig::Llava { pinpoints: None, .. } => llava::FAMILY.name,
            BenchConfig::Llava { pinpoints: Some(_), .. } => llava_next::FAMILY.name,
            BenchConfig::Qwen { .. } => qwen2_5_vl::FAMILY.name,
        }
    }

    pub fn decoder(&self) -> &decoder::Config {
        match self {
            BenchConfig::Llava { config, .. } => &config.text_config,
            BenchConfig::Qwen { config, .. } => &config.text,
        }
    }

    pub fn decoder_mut(&mut self) -> &mut decoder::Config {
        match self {
            BenchConfig::Llava { config, .. } => &mut config.text_config,
            BenchConfig::Qwen { config, .. } => &mut config.text,
        }
    }

    /// (decoder layers, vision-encoder layers).
    pub fn depths(&self) -> (usize, usize) {
        match self {
            BenchConfig::Llava { config, .. } => {
                (config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers)
            }
            BenchConfig::Qwen { config, .. } => (config.text.num_hidden_layers, config.vision.depth),
        }
    }

    pub fn vision_hidden_size(&self) -> usize {
        match self {
            BenchConfig::Llava { config, .. } => config.vision_config.hidden_size,
            BenchConfig::Qwen { config, .. } => config.vision.hidden_size,
        }
    }

    /// Keeps only the first `llm_layers` decoder and `vision_layers` encoder layers.
    pub fn trim(&mut self, llm_layers: Option<usize>, vision_layers: Option<usize>) -> Result<()> {
        match self {
            BenchConfig::Llava { config, .. } => config.trim(llm_layers, vision_layers),
            BenchConfig::Qwen { config, .. } => config.trim(llm_layers, vision_layers),
        }
    }

    /// The (width, height) the model is told its image has: the anyres image, or Qwen2.5-VL's
    /// smart-resized one (which resizes to itself); none for LLaVA-1.5's single view.
    pub fn encoded_size(&self) -> Result<Option<(u32, u32)>> {
        Ok(match self {
            BenchConfig::Llava { pinpoints, .. } => pinpoints.as_ref().map(|_| (ANYRES_BENCH_SIDE, ANYRES_BENCH_SIDE)),
            BenchConfig::Qwen { processor, image, .. } => {
                let (gh, gw) = qwen2_5_vl::patch_grid(processor, image.0, image.1)?;
                let side = |patches: usize| patches as u32 * processor.patch_size;
                Some((side(gw), side(gh)))
            }
        })
    }
}

/// Parameters of the whole model (vision tower, projector or merger, decoder with embeddings and LM head).
pub fn parameter_count(cfg: &BenchConfig) -> usize {
    match cfg {
        BenchConfig::Llava { config, .. } => {
            let (vh, h) = (config.vision_config.hidden_size, config.text_config.hidden_size);
            let projector = vh * h + h * h + 2 * h;
            clip_parameters(&config.vision_config) + projector + decoder_parameters(&config.text_config)
        }
        BenchConfig::Qwen { config, .. } => qwen_vision_parameters(&config.vision) + decoder_parameters(&config.text),
    }
}

fn clip_parameters(v: &clip::Config) -> usize {
    let (vh, vi) = (v.hidden_size, v.intermediate_size);
    let layer = 4 * (vh * vh + vh) + (vh * vi + vi) + (vi * vh + vh) + 4 * vh;
    v.num_hidden_layers * layer
        + vh * v.num_channels * v.patch_size * v.patch_size
        + vh
        + (v.num_patches() + 1) * vh
        + 2 * vh
}

/// Qwen2.5-VL's tower: the patch embedding (no bias), blocks of two RMSNorms, qkv and proj, and a gated
/// MLP (all with biases), and the merger (RMSNorm, 4·D → 4·D → out).
fn qwen_vision_parameters(v: &qwen2_5_vl::config::VisionConfig) -> usize {
    let (d, i) = (v.hidden_size, v.intermediate_size);
    let block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * (d * i + i) + (i * d + d);
    let wide = d * v.spatial_merge_size * v.spatial_merge_size;
    let merger = d + (wide * wide + wide) + (wide * v.out_hidden_size + v.out_hidden_size);
    v.depth * block + d * v.patch_values() + merger
}

fn decoder_parameters(t: &decoder::Config) -> usize {
    let (h, i, hd) = (t.hidden_size, t.intermediate_size, t.head_dim());
    let (q, kv) = (t.num_attention_heads * hd, t.num_key_value_heads() * hd);
    let qkv_bias = if t.attention_bias || t.qkv_bias { q + 2 * kv } else { 0 };
    let o_bias = if t.attention_bias { h } else { 0 };
    let mlp_bias = if t.mlp_bias { 2 * i + h } else { 0 };
    let layer = 2 * h * q + 2 * h * kv + qkv_bias + o_bias + 3 * h * i + mlp_bias + 2 * h;
    let embeddings = t.vocab_size() * h * if t.tie_word_embeddings { 1 } else { 2 };
    t.num_hidden_layers * layer + embeddings + h
}

/// The decoder's weights that `--quantize` stores in its format: every layer's linears and the LM head.
fn quantizable_parameters(t: &decoder::Config) -> usize {
    let (h, i, hd) = (t.hidden_size, t.intermediate_size, t.head_dim());
    let (q, kv) = (t.num_attention_heads * hd, t.num_key_value_heads() * hd);
    t.num_hidden_layers * (2 * h * q + 2 * h * kv + 3 * h * i) + t.vocab_size() * h
}

/// Where a llava-hf checkpoint keeps each part (the layout random-weight models are built with).
pub fn llava_hf_prefixes() -> llava::WeightPrefixes {
    llava::WeightPrefixes {
        vision: "vision_tower.vision_model".into(),
        projector: "multi_modal_projector".into(),
        llm: "language_model.model".into(),
        lm_head: "language_model.lm_head".into(),
    }
}

/// A weight source that makes every tensor up from a seed and its name: norm scales (initialised to a
/// constant by candle-nn) keep that constant, everything else is uniform with standard deviation
/// `std`. The same seed and name always give the same tensor, whatever the thread count.
#[derive(Debug, Clone, Copy)]
pub struct RandomWeights {
    pub seed: u64,
    pub std: f32,
}

impl Default for RandomWeights {
    fn default() -> Self {
        Self { seed: 0, std: 0.02 }
    }
}

impl RandomWeights {
    /// A [`VarBuilder`] over these weights.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    /// `n` values uniform in ±√3·std, from the seed and `key`.
    pub fn values(&self, key: &str, n: usize) -> Vec<f32> {
        uniform(mix(self.seed ^ crate::Fnv1a::of(key.as_bytes())), n, 3f32.sqrt() * self.std)
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match h {
            // Norm scales; a zero constant is what `VarBuilder::get` passes for any plain tensor.
            Init::Const(v) if v != 0.0 => Tensor::full(v as f32, s, dev)?.to_dtype(dtype),
            _ => Tensor::from_vec(self.values(name, s.elem_count()), s, dev)?.to_dtype(dtype),
        }
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights: {name} was asked for without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` values uniform in [-bound, bound): SplitMix64 streams, one per fixed-size chunk, filled on all
/// cores (the chunking, not the thread count, fixes the values).
fn uniform(key: u64, n: usize, bound: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 18;
    let mut out = vec![0f32; n];
    let fill = |chunk_idx: usize, chunk: &mut [f32]| {
        let mut state = mix(key ^ mix(chunk_idx as u64 + 1));
        let scale = 2.0 * bound / (1u32 << 24) as f32;
        for pair in chunk.chunks_mut(2) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let r = mix(state);
            for (k, v) in pair.iter_mut().enumerate() {
                let bits = ((r >> (32 * k as u64)) as u32) >> 8;
                *v = bits as f32 * scale - bound;
            }
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    if n < 4 * CHUNK || threads == 1 {
        out.chunks_mut(CHUNK).enumerate().for_each(|(i, c)| fill(i, c));
        return out;
    }
    let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(CHUNK).enumerate().collect();
    let per = chunks.len().div_ceil(threads);
    let mut groups: Vec<Vec<(usize, &mut [f32])>> = Vec::new();
    let mut it = chunks.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        for group in groups {
            s.spawn(move || group.into_iter().for_each(|(i, c)| fill(i, c)));
        }
    });
    out
}

/// Text tokens a benchmark holds in the KV cache besides the image's: the prompt and what it decodes.
const BENCH_TEXT: usize = PREFIX_TOKENS + SUFFIX_TOKENS + 64;
/// Activations, scratch and the allocator's slack on top of weights and cache.
const WORKSPACE_BYTES: u64 = 1 << 30;

/// Bytes a benchmark of `cfg` in `dtype` with `vision_tokens` unpruned image tokens needs at its peak,
/// roughly: the weights, one weight matrix in f32 while it is made or converted, a full KV cache, and a
/// workspace for activations.
pub fn memory_estimate(cfg: &BenchConfig, vision_tokens: usize, dtype: DType) -> u64 {
    let t = cfg.decoder();
    let bytes = dtype.size_in_bytes() as u64;
    let weights = match t.weights.quantize {
        None => parameter_count(cfg) as u64 * bytes,
        Some(q) => {
            let quantized = quantizable_parameters(t) as u64;
            // A tied LM head is a quantised copy next to the embedding it shares.
            let dense = parameter_count(cfg) as u64 - if t.tie_word_embeddings { 0 } else { quantized };
            dense * bytes + (quantized as f64 * q.bits_per_weight() / 8.0) as u64
        }
    };
    let largest = (t.vocab_size() * t.hidden_size) as u64 * 4;
    let context = BENCH_TEXT + vision_tokens;
    let opts = LoadOptions { dtype, quantize: t.weights.quantize, ..LoadOptions::default() };
    let kv_bytes = opts.weights().cache_dtype(opts.compute_dtype(), true).size_in_bytes() as u64;
    let kv = (t.num_hidden_layers * 2 * context * t.num_key_value_heads() * t.head_dim()) as u64 * kv_bytes;
    weights + largest + kv + WORKSPACE_BYTES
}

/// Refuses a benchmark that would not fit in `available` bytes, saying what would: fewer decoder layers
/// (the most that fit) or a half-precision dtype.
pub fn check_memory(cfg: &BenchConfig, vision_tokens: usize, dtype: DType, available: u64) -> Result<()> {
    let estimate = |c: &BenchConfig, dtype| memory_estimate(c, vision_tokens, dtype);
    let need = estimate(cfg, dtype);
    if need <= available {
        return Ok(());
    }
    let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
    let layers = cfg.decoder().num_hidden_layers;
    let fits_at = (2..layers).rev().find(|&n| {
        let mut c = cfg.clone();
        c.trim(Some(n), None).is_ok() && estimate(&c, dtype) <= available
    });
    let mut ways = Vec::new();
    if let Some(n) = fits_at {
        ways.push(format!("trim the decoder with `llm_layers` {n} or fewer"));
    }
    if dtype.size_in_bytes() > 2 && estimate(cfg, DType::BF16) <= available {
        ways.push(format!("use `dtype` bf16 (about {})", gb(estimate(cfg, DType::BF16))));
    }
    let mut q4 = cfg.clone();
    q4.decoder_mut().weights.quantize = Some(crate::models::linear::Quantize::Q4K);
    if cfg.decoder().weights.quantize.is_none() && estimate(&q4, dtype) <= available {
        ways.push(format!("use `quantize` q4_k (about {})", gb(estimate(&q4, dtype))));
    }
    if ways.is_empty() {
        ways.push("trim the vision tower with `vision_layers` and the decoder with `llm_layers` 2".into());
    }
    Err(Error::invalid(
        "llm_layers",
        format!(
            "is {layers}: this benchmark needs about {} in {dtype:?} and {} is available; {}",
            gb(need),
            gb(available),
            ways.join(", or ")
        ),
    ))
}

/// An engine over a random-weight model with the shapes of `cfg`, without a tokenizer (feed it token
/// ids: [`bench_prompt`]).
/// `dtype` is the weights' dtype, as for a checkpoint ([`LoadOptions::compute_dtype`]).
pub fn random_engine(cfg: &BenchConfig, weights: RandomWeights, dtype: DType, device: &Device) -> Result<Engine> {
    let opts = LoadOptions {
        dtype,
        device: device.clone(),
        quantize: cfg.decoder().weights.quantize,
        ..LoadOptions::default()
    };
    let vb = weights.var_builder(opts.compute_dtype(), device);
    let mut cfg = cfg.clone();
    cfg.decoder_mut().weights = opts.weights();
    match &mut cfg {
        BenchConfig::Llava { config, .. } => config.vision_config.weight_dtype = opts.weights().dtype,
        BenchConfig::Qwen { config, .. } => config.vision.weight_dtype = opts.weights().dtype,
    }
    let model: Box<dyn VisionLanguageModel> = match &cfg {
        BenchConfig::Llava { config, pinpoints } => {
            let prefixes = llava_hf_prefixes();
            let base = llava::Llava::new(config, &prefixes, llava::PreprocessConfig::default(), vb.clone())?;
            match pinpoints {
                None => Box::new(base),
                Some(p) => Box::new(llava_next::LlavaNext::new(
                    base,
                    &prefixes,
                    p.clone(),
                    llava_next::config::Template::VicunaV1,
                    vb,
                )?),
            }
        }
        BenchConfig::Qwen { config, processor, .. } => {
            Box::new(qwen2_5_vl::Qwen25Vl::new(config.clone(), processor.clone(), vb)?)
        }
    };
    Ok(Engine::from_parts(model, None, vec![], device.clone()))
}

/// The side of the square image an anyres benchmark encodes: 2×2 crops, the paper's 2880-patch setting.
pub const ANYRES_BENCH_SIDE: u32 = 672;

/// The layout of the benchmark's image: the encoder's grid, for anyres the 672×672 image's views, for
/// Qwen2.5-VL the merged grid of the smart-resized image.
pub fn bench_layout(cfg: &BenchConfig) -> Result<VisualLayout> {
    Ok(match cfg {
        BenchConfig::Llava { config, pinpoints: None } => {
            let side = config.vision_config.grid_side();
            VisualLayout::grid(side, side)
        }
        BenchConfig::Llava { config, pinpoints: Some(p) } => {
            let v = &config.vision_config;
            llava_next::layout(v, &llava_next::plan(v, p, ANYRES_BENCH_SIDE, ANYRES_BENCH_SIDE)?)
        }
        BenchConfig::Qwen { config, processor, image } => {
            let (gh, gw) = qwen2_5_vl::patch_grid(processor, image.0, image.1)?;
            qwen2_5_vl::merged_layout(&config.vision, gh, gw)
        }
    })
}

/// What a benchmark pass encodes: pixel values for every view, and the image size anyres needs.
#[derive(Debug, Clone)]
pub struct BenchImage {
    pub pixels: Tensor,
    pub size: Option<(u32, u32)>,
}

/// Tokens before and after the image in the benchmark prompt: the vicuna_v1 template around
/// "What is shown in this image?" (the fixture's prompt) has 35 and 14.
pub const PREFIX_TOKENS: usize = 35;
pub const SUFFIX_TOKENS: usize = 14;
/// The question the benchmark asks when the model has a tokenizer.
pub const BENCH_QUESTION: &str = "What is shown in this image?";

/// Token ids shaped like the fixture prompt: BOS (1) then 34 seeded ids, and 14 after the image, all
/// below `min(vocab, 32000)` (never the image or pad token).
pub fn bench_prompt(seed: u64, vocab: usize) -> PromptTokens {
    let top = vocab.clamp(3, 32000) as u64;
    let mut state = mix(seed ^ 0x5eed_7041);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (2 + mix(state) % (top - 2)) as u32
    };
    let prefix = std::iter::once(1).chain((1..PREFIX_TOKENS).map(|_| next())).collect();
    let suffix = (0..SUFFIX_TOKENS).map(|_| next()).collect();
    PromptTokens { prefix, suffix }
}

/// Seeded pixel values in the range CLIP's normalisation produces (about ±2), in the encoder's input
/// shape: (3, S, S); for anyres one such view per view of the 672×672 image; for Qwen2.5-VL one row of
/// 3 · 2 · 14 · 14 values per patch of the resized image.
pub fn random_image(cfg: &BenchConfig, seed: u64, device: &Device) -> Result<BenchImage> {
    let shape = match cfg {
        BenchConfig::Llava { config, pinpoints } => {
            let v = &config.vision_config;
            let view = vec![v.num_channels, v.image_size, v.image_size];
            match pinpoints {
                None => view,
                Some(_) => [vec![bench_layout(cfg)?.views], view].concat(),
            }
        }
        BenchConfig::Qwen { config, processor, image } => {
            let (gh, gw) = qwen2_5_vl::patch_grid(processor, image.0, image.1)?;
            vec![gh * gw, config.vision.patch_values()]
        }
    };
    let values = uniform(mix(seed ^ 0x9e1_5e15), shape.iter().product(), 1.8);
    Ok(BenchImage { pixels: Tensor::from_vec(values, shape, device)?, size: cfg.encoded_size()? })
}

// ---------------------------------------------------------------------------------------------------
// One timed pass
// ---------------------------------------------------------------------------------------------------

/// Timings and memory of one pass: image → vision encoder → stage 1 → projector → decoder prefill →
/// first token → `decode_tokens` greedy steps.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sample {
    /// The vision encoder.
    pub vision_ms: f64,
    /// Nüwa's stage 1: the similarity features (mean of the encoder's trailing hidden states), anchors,
    /// similarity graph, aggregation. Other methods: their vision-side reduction; 0 without one.
    pub stage1_ms: f64,
    /// The decoder over the prompt (stage 2 included).
    pub llm_prefill_ms: f64,
    /// Pixels in → first token chosen (vision, stage 1, projector, sequence, decoder, LM head, argmax).
    pub ttft_ms: f64,
    /// Mean time of one decode step; 0 when no token was decoded.
    pub decode_ms_per_token: f64,
    /// KV cache right after prefill.
    pub kv_cache_prefill_bytes: usize,
    /// KV cache after prefill and decoding.
    pub kv_cache_bytes: usize,
    /// Vision tokens entering the decoder and surviving the cut.
    pub k1: usize,
    pub k2: Option<usize>,
}

impl Sample {
    /// Vision encoder + stage 1 + decoder prefill: the "end-to-end prefill" the goals speak of.
    pub fn prefill_ms(&self) -> f64 {
        self.vision_ms + self.stage1_ms + self.llm_prefill_ms
    }
}

/// Runs one pass and times it. Decoding is greedy and stops early at the context limit.
pub fn measure(
    engine: &Engine,
    prompt: &PromptTokens,
    image: &BenchImage,
    method: &Method,
    decode_tokens: usize,
) -> Result<Sample> {
    let t0 = Instant::now();
    let encoded = engine.encode_image(&image.pixels, image.size, method)?;
    let state = engine.prefill_encoded(prompt, Some(encoded), method)?;
    let (kv_cache_prefill_bytes, timings) = (state.cache.bytes(), state.timings.clone());
    let (k1, k2) = state.vision.as_ref().map_or((0, None), |v| (v.k1, v.k2));
    let opts = SessionOptions { max_new_tokens: decode_tokens + 1, stop: vec![], ignore_eos: true };
    let mut session = engine.session(state, &Sampling::default(), opts)?;
    session.step()?;
    let ttft_ms = ms(t0);
    let t1 = Instant::now();
    let mut steps = 0;
    while session.step()?.is_some() {
        steps += 1;
    }
    let decode_ms_per_token = if steps > 0 { ms(t1) / steps as f64 } else { 0.0 };
    let generation = session.finish();
    Ok(Sample {
        vision_ms: timings.vision_ms,
        stage1_ms: timings.stage1_ms,
        llm_prefill_ms: timings.prefill_ms,
        ttft_ms,
        decode_ms_per_token,
        kv_cache_prefill_bytes,
        kv_cache_bytes: generation.kv_cache_bytes,
        k1,
        k2,
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Median, minimum and maximum of a set of measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty set. The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Self { median, min: v[0], max: v[n - 1] })
    }
}

/// `value / baseline`; 1 when both are zero (nothing to compare), `None` for a zero baseline otherwise.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    if baseline != 0.0 {
        Some(value / baseline)
    } else if value == 0.0 {
        Some(1.0)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------------
// Process memory (Linux; `None` elsewhere)
// ---------------------------------------------------------------------------------------------------

pub mod memory {
    /// Resets the peak resident set size (VmHWM) to the current one. False where unsupported.
    pub fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// Peak resident set size since start or the last [`reset_peak`], bytes.
    pub fn peak_rss_bytes() -> Option<u64> {
        status_kib("VmHWM:").map(|k| k * 1024)
    }

    /// Current resident set size, bytes.
    pub fn rss_bytes() -> Option<u64> {
        status_kib("VmRSS:").map(|k| k * 1024)
    }

    /// What this process may still allocate, bytes: the least of the memory the kernel reports available,
    /// the cgroup's limit less its usage, and the address-space limit (`ulimit -v`).
    pub fn available_bytes() -> Option<u64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let mut available = line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024;
        let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|t| t.trim().parse::<u64>().ok());
        if let (Some(max), Some(used)) = (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
            available = available.min(max.saturating_sub(used));
        }
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let address_space = limits
            .lines()
            .find(|l| l.starts_with("Max address space"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|soft| soft.parse::<u64>().ok());
        if let (Some(limit), Some(used)) = (address_space, status_kib("VmSize:")) {
            available = available.min(limit.saturating_sub(used * 1024));
        }
        Some(available)
    }

    /// Total physical memory, bytes.
    pub fn total_bytes() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
    }

    fn status_kib(key: &str) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Hands freed heap memory back to the system so that the next peak measures the next pass, not
    /// what the allocator kept from the previous one.
    pub fn release_free_memory() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            extern "C" {
                fn malloc_trim(pad: usize) -> i32;
            }
            // SAFETY: glibc's malloc_trim only returns unused heap pages to the kernel.
            unsafe {
                malloc_trim(0);
            }
        }
    }
}
