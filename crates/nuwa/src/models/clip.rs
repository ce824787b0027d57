//! CLIP vision transformer (ViT-L/14-336 in LLaVA-1.5), after transformers' `CLIPVisionModel`.
//!
//! The caller names the hidden states it needs and, optionally, one layer at which to read the [CLS]
//! query's attention row. The encoder stops after the deepest layer asked for, keeps only the requested
//! hidden states, and never builds more than the one attention matrix it is computing.

use candle_core::{DType, IndexOp, Module, Tensor, D};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};

use super::attention::Products;
use super::linear::Linear;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `CLIPVisionConfig` as LLaVA's `vision_config` holds it; omitted keys take transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The linears' weight dtype when it is not the activations' (set at load).
    #[serde(skip)]
    pub weight_dtype: Option<DType>,
}

fn default_hidden_size() -> usize {
    768
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    32
}
fn default_hidden_act() -> String {
    "quick_gelu".into()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}

/// The largest vision input side accepted (pixels).
pub const MAX_IMAGE_SIZE: usize = 16_384;

impl Config {
    /// How the tower's linears hold their weights (never quantised).
    pub fn weights(&self) -> crate::models::linear::Weights {
        crate::models::linear::Weights { dtype: self.weight_dtype, quantize: None }
    }

    /// Patches per side of the (square) input.
    pub fn grid_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid_side() * self.grid_side()
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!("vision_config.layer_norm_eps must be a positive number, got {}", self.layer_norm_eps));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("image_size", self.image_size),
        ] {
            if v == 0 {
                return Err(format!("vision_config.{name} must be at least 1"));
            }
        }
        // Far beyond any released tower, and small enough that patch counts and `as u32` stay exact.
        if self.image_size > MAX_IMAGE_SIZE {
            return Err(format!(
                "vision_config.image_size {} is above the {MAX_IMAGE_SIZE} supported",
                self.image_size
            ));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Activation::parse(&self.hidden_act).map(|_| ())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(format!("vision_config.hidden_act {other:?} is not supported (quick_gelu, gelu)")),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => super::activation::quick_gelu(x),
            Self::Gelu => x.gelu_erf(),
        }
    }
}

/// What a caller wants from one encoder pass.
#[derive(Debug, Clone, Default)]
pub struct VisionRequest {
    /// Indices into transformers' `hidden_states`: 0 is the embedding output, `l` the output of layer `l`.
    pub hidden_states: Vec<usize>,
    /// 0-based encoder layer whose [CLS] attention row (and head-averaged keys) to return.
    pub cls_attention_layer: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// Requested hidden states, each (1 + N, hidden) with the [CLS] row first.
    pub hidden_states: BTreeMap<usize, Tensor>,
    /// The [CLS] query's softmax attention over all 1 + N tokens, per head: (heads, 1 + N), f32.
    pub cls_attention: Option<Tensor>,
    /// That layer's keys (bias included, unscaled) averaged over heads: (1 + N, head_dim).
    pub mean_keys: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` fused.
    qkv: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    products: Products,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: Linear::load_fused(
                h,
                &[(h, vb.pp("q_proj")), (h, vb.pp("k_proj")), (h, vb.pp("v_proj"))],
                true,
                cfg.weights(),
            )?,
            out_proj: Linear::load(h, h, true, cfg.weights(), vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            products: Products::for_weights(&cfg.weights()),
        })
    }

    /// Self-attention over (T, hidden); with `probe`, also the [CLS] query's probabilities per head and
    /// the keys averaged over heads.
    fn forward(&self, x: &Tensor, probe: bool) -> candle_core::Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let t = x.dim(0)?;
        // (3, heads, T, head_dim) in one copy; q, k and v are contiguous views of it.
        let qkv =
            self.qkv.forward(x)?.reshape((t, 3, self.num_heads, self.head_dim))?.permute((1, 2, 0, 3))?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (q, k, v) = (qkv.i(0)?, qkv.i(1)?, qkv.i(2)?);
        if !probe && super::attention::supports(&q) {
            let out = super::attention::attention(&q, &k, &v, scale, super::attention::Mask::None, self.products)?;
            let out = out.transpose(0, 1)?.reshape((t, self.num_heads * self.head_dim))?;
            return Ok((self.out_proj.forward(&out)?, None));
        }
        let kt = k.t()?;
        let probs = candle_nn::ops::softmax_last_dim(&(q.matmul(&kt)? * scale)?.to_dtype(DType::F32)?)?;
        let row = if probe { Some((probs.i((.., 0, ..))?, k.mean(0)?)) } else { None };
        let out =
            probs.to_dtype(v.dtype())?.matmul(&v)?.transpose(0, 1)?.reshape((t, self.num_heads * self.head_dim))?;
        Ok((self.out_proj.forward(&out)?, row))
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            layer_norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Linear::load(h, i, true, cfg.weights(), vb.pp("mlp").pp("fc1"))?,
            fc2: Linear::load(i, h, true, cfg.weights(), vb.pp("mlp").pp("fc2"))?,
            act: Activation::parse(&cfg.hidden_act).map_err(candle_core::Error::msg)?,
        })
    }

    fn forward(&self, x: &Tensor, probe: bool) -> candle_core::Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let (attn, row) = self.self_attn.forward(&self.layer_norm1.forward(x)?, probe)?;
        let x = (x + attn)?;
        let mlp = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        Ok(((x + mlp)?, row))
    }
}

#[derive(Debug, Clone)]
pub struct ClipVisionModel {
    /// Patch embedding as a (hidden, C·p·p) matrix: a stride-p convolution is one matmul over patches.
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    cfg: Config,
}

impl ClipVisionModel {
    /// `vb` points at the weights named `embeddings.*`, `pre_layrnorm`, `encoder.layers.N.*`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let emb = vb.pp("embeddings");
        let patch_weight = emb.get((h, c, p, p), "patch_embedding.weight")?.reshape((h, c * p * p))?;
        let class_embedding = emb.get(h, "class_embedding")?;
        let position_embedding = emb.get((cfg.num_patches() + 1, h), "position_embedding.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp("encoder").pp("layers").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            patch_weight,
            class_embedding,
            position_embedding,
            pre_layrnorm: layer_norm(h, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            layers,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Encodes one image, `pixels` (3, S, S) normalised, returning what `req` asks for.
    pub fn forward(&self, pixels: &Tensor, req: &VisionRequest) -> candle_core::Result<VisionOutput> {
        let n_layers = self.layers.len();
        if let Some(&bad) = req.hidden_states.iter().find(|&&i| i > n_layers) {
            candle_core::bail!("hidden state {bad} requested but the vision encoder has {n_layers} layers");
        }
        if let Some(l) = req.cls_attention_layer.filter(|&l| l >= n_layers) {
            candle_core::bail!("attention of layer {l} requested but the vision encoder has {n_layers} layers");
        }
        let deepest =
            req.hidden_states.iter().copied().chain(req.cls_attention_layer.map(|l| l + 1)).max().unwrap_or(0);

        let mut x = self.pre_layrnorm.forward(&self.embed(pixels)?)?;
        let mut out = VisionOutput { hidden_states: BTreeMap::new(), cls_attention: None, mean_keys: None };
        if req.hidden_states.contains(&0) {
            out.hidden_states.insert(0, x.clone());
        }
        for (i, layer) in self.layers.iter().enumerate().take(deepest) {
            let (next, row) = layer.forward(&x, req.cls_attention_layer == Some(i))?;
            x = next;
            if let Some((row, keys)) = row {
                out.cls_attention = Some(row);
                out.mean_keys = Some(keys);
            }
            if req.hidden_states.contains(&(i + 1)) {
                out.hidden_states.insert(i + 1, x.clone());
            }
        }
        Ok(out)
    }

    /// [CLS] + patch embeddings + learned positions, (1 + N, hidden).
    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (c, p, g) = (self.cfg.num_channels, self.cfg.patch_size, self.cfg.grid_side());
        let (pc, ph, pw) = pixels.dims3()?;
        if (pc, ph, pw) != (c, g * p, g * p) {
            candle_core::bail!(
                "pixel values have shape ({pc}, {ph}, {pw}), the vision encoder expects ({c}, {s}, {s})",
                s = g * p
            );
        }
        // (C, g, p, g, p) -> (g, g, C, p, p) -> (N, C·p·p), the same order as the conv weight
        let patches = pixels
            .to_dtype(self.patch_weight.dtype())?
            .reshape((c, g, p, g, p))?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?
            .reshape((g * g, c * p * p))?;
        let patch_emb = patches.matmul(&self.patch_weight.t()?)?;
        let cls = self.class_embedding.unsqueeze(0)?;
        Tensor::cat(&[&cls, &patch_emb], 0)? + &self.position_embedding
    }
}

/// The [CLS] row reduced to one saliency value per patch: summed over heads, [CLS] column dropped.
pub fn cls_saliency(cls_attention: &Tensor) -> candle_core::Result<Tensor> {
    cls_attention.sum(0)?.narrow(D::Minus1, 1, cls_attention.dim(1)? - 1)
}
