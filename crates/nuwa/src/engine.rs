//! The pipeline: image → vision encoder → token reduction → projector → sequence with positions →
//! decoder (with an optional mid-stack cut) → generation. This is the one place where a pruning method
//! meets the models' hooks.

use crate::checkpoint::Checkpoint;
use crate::generation::{Sampler, Sampling};
use crate::hooks::TokenDropper;
use crate::models::{clip, llama, llava::Llava};
use crate::preprocess::{self, Geometry, PreprocessConfig};
use crate::prompt::{PromptTokens, TextTokenizer};
use crate::prune::{divprune, layout_positions, nuwa, pool, random, visionzip, vispruner, CutRecord, Method, PositionPolicy, Span, VisionDropper};
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu }
    }
}

/// A loaded model ready to answer requests.
pub struct Engine {
    pub model: Llava,
    /// Absent for random-weight benchmark models, which are fed token ids directly.
    pub tokenizer: Option<TextTokenizer>,
    pub preprocess: PreprocessConfig,
    eos_token_ids: Vec<u32>,
    device: Device,
}

/// Where the image comes from.
#[derive(Debug, Clone)]
pub enum ImageInput {
    Path(PathBuf),
    /// Already preprocessed pixel values, (3, S, S).
    Pixels(Tensor),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub image: Option<ImageInput>,
    pub method: Method,
    /// Overrides the method's own position policy.
    pub positions: Option<PositionPolicy>,
    pub sampling: Sampling,
    pub max_new_tokens: usize,
}

/// What the vision side hands to the decoder for one image.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// Patch grid (rows, columns).
    pub grid: (usize, usize),
    /// Kept patches in raster order.
    pub kept: Vec<usize>,
    /// Per token entering the decoder, the patches it stands for (empty for a [CLS] token).
    pub sources: Vec<Vec<usize>>,
    /// Stage-1 pillars (raster indices), for methods that have them.
    pub pillars: Vec<usize>,
    /// Per-patch [CLS] saliency (summed over heads) at the feature layer.
    pub saliency: Vec<f32>,
    /// Vision features of the kept tokens before the projector, (K, vision hidden).
    pub features: Tensor,
    /// The same after the projector, (K, text hidden).
    pub tokens: Tensor,
    /// How the original image maps onto the model's square input (absent for raw pixel values).
    pub geometry: Option<Geometry>,
    pub vision_ms: f64,
    pub stage1_ms: f64,
}

/// What pruning did to one request, as reported to users.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VisionReport {
    pub grid: [usize; 2],
    pub method: &'static str,
    pub budget: Option<usize>,
    pub positions: PositionPolicy,
    pub k1: usize,
    pub k2: Option<usize>,
    /// Raster indices kept by stage 1, ascending.
    pub stage1: Vec<usize>,
    pub pillars: Vec<usize>,
    /// Raster indices that survive stage 2 (equal to `stage1` without a cut).
    pub stage2: Vec<usize>,
    pub stage2_layer: Option<usize>,
    /// Mean number of vision tokens over the decoder's layers.
    pub avg_vision_tokens: f64,
    /// Vision tokens entering the decoder: per token, the patches it stands for.
    pub vision_tokens: Vec<Vec<usize>>,
    /// Each cut inside the decoder: the layer and what survived it.
    pub cuts: Vec<CutRecord>,
}

/// Milliseconds per step; serialised under `timings_ms` with short keys.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    #[serde(rename = "vision")]
    pub vision_ms: f64,
    /// Vision-side token reduction (Nüwa's stage 1, or a baseline's selection).
    #[serde(rename = "stage1")]
    pub stage1_ms: f64,
    #[serde(rename = "prefill")]
    pub prefill_ms: f64,
    #[serde(rename = "decode_per_token")]
    pub decode_ms_per_token: f64,
}

/// The state after prefill: what decoding continues from.
pub struct Prefill {
    pub logits: Tensor,
    pub cache: llama::Cache,
    /// Position id of the next token: the unpruned sequence length.
    pub next_position: usize,
    /// Position ids of the prefill sequence as it entered the decoder.
    pub positions: Vec<u32>,
    pub prompt_tokens: usize,
    pub vision: Option<VisionReport>,
    pub encoded: Option<EncodedImage>,
    pub timings: Timings,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// `eos`, `length` (max new tokens) or `context` (the context window is full).
    pub stop_reason: &'static str,
    pub timings: Timings,
    pub vision: Option<VisionReport>,
    pub kv_cache_bytes: usize,
    /// The encoded image (kept patches, saliency, geometry) for overlays; not serialised.
    #[serde(skip)]
    pub encoded: Option<EncodedImage>,
}

impl Engine {
    /// Loads a llava-hf checkpoint directory.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let ckpt = Checkpoint::open(dir)?;
        // SAFETY: the files were validated just above; mapping them is how candle avoids a copy.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&ckpt.weight_files, opts.dtype, &opts.device) }
            .map_err(|e| Error::checkpoint(dir, e.to_string()))?;
        let model = Llava::new(&ckpt.config, &ckpt.prefixes, vb).map_err(|e| Error::checkpoint(dir, e.to_string()))?;
        let tokenizer = TextTokenizer::from_file(&ckpt.tokenizer_file)?;
        let preprocess = match &ckpt.preprocessor_file {
            Some(p) => PreprocessConfig::from_file(p)?,
            None => PreprocessConfig::default(),
        };
        let eos = if ckpt.eos_token_ids.is_empty() { tokenizer.token_id("</s>").into_iter().collect() } else { ckpt.eos_token_ids.clone() };
        Ok(Self::from_parts(model, Some(tokenizer), preprocess, eos, opts.device.clone()))
    }

    pub fn from_parts(
        model: Llava,
        tokenizer: Option<TextTokenizer>,
        preprocess: PreprocessConfig,
        eos_token_ids: Vec<u32>,
        device: Device,
    ) -> Self {
        Self { model, tokenizer, preprocess, eos_token_ids, device }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidArgument("this engine has no tokenizer (a random-weight preset): pass token ids".into())
        })
    }

    fn grid(&self) -> (usize, usize) {
        let g = self.model.config.vision_config.grid_side();
        (g, g)
    }

    /// Reads an image file and preprocesses it as the checkpoint's processor does.
    pub fn load_pixels(&self, path: &Path) -> Result<(Tensor, Geometry)> {
        self.pixels(&preprocess::load_image(path)?)
    }

    /// Preprocesses a decoded image as the checkpoint's processor does: (3, S, S) and the geometry
    /// that maps the model's square back onto the image.
    pub fn pixels(&self, img: &image::RgbImage) -> Result<(Tensor, Geometry)> {
        let pre = preprocess::preprocess(img, &self.preprocess);
        let pixels = Tensor::from_vec(pre.pixels, (3, pre.height as usize, pre.width as usize), &self.device)?;
        Ok((pixels, pre.geometry))
    }

    /// Encodes one image and reduces its tokens as `method` says, up to (not including) the decoder.
    pub fn encode_image(&self, pixels: &Tensor, method: &Method) -> Result<EncodedImage> {
        let features = self.encode_vision(pixels, needs_similarity(method))?;
        self.reduce(&features, method)
    }

    /// Runs the vision encoder once, keeping what any method may need: the projector's input layer, the
    /// [CLS] saliency row and, with `similarity`, the trailing hidden states Nüwa's stage 1 compares.
    /// One result serves every pruning configuration ([`Engine::reduce`]).
    pub fn encode_vision(&self, pixels: &Tensor, similarity: bool) -> Result<VisionFeatures> {
        let cfg = &self.model.config;
        let depth = cfg.vision_config.num_hidden_layers;
        let feature_layer = cfg.feature_layer().map_err(Error::InvalidArgument)?;
        // The [CLS] row of the feature layer's attention costs one row of work: always read it, so the
        // saliency is there for overlays whatever the method.
        let mut request =
            clip::VisionRequest { hidden_states: vec![feature_layer], cls_attention_layer: Some(feature_layer - 1) };
        let first_similarity = (depth + 1).saturating_sub(nuwa::SIMILARITY_LAYERS);
        if similarity {
            request.hidden_states.extend(first_similarity..=depth);
        }
        let pixels = pixels.to_device(&self.device)?;
        let t0 = Instant::now();
        let out = self.model.vision.forward(&pixels, &request)?;
        let vision_ms = ms(t0);
        // Patch rows only: the [CLS] token never reaches the decoder.
        let patches = |i: usize| -> Result<Tensor> {
            let hs = &out.hidden_states[&i];
            Ok(hs.narrow(0, 1, hs.dim(0)? - 1)?)
        };
        let cls = out.cls_attention.as_ref().expect("requested above");
        let t1 = Instant::now();
        let similarity_features = if similarity {
            let hidden = (first_similarity..=depth).map(patches).collect::<Result<Vec<_>>>()?;
            Some(nuwa::similarity_features(&hidden)?)
        } else {
            None
        };
        let similarity_ms = ms(t1);
        Ok(VisionFeatures {
            grid: self.grid(),
            cls_feature: out.hidden_states[&feature_layer].narrow(0, 0, 1)?,
            mean_keys: out.mean_keys.clone().expect("requested with the attention row"),
            features: patches(feature_layer)?,
            similarity: similarity_features,
            similarity_ms,
            saliency: clip::cls_saliency(cls)?.to_vec1::<f32>()?,
            geometry: None,
            vision_ms,
        })
    }

    /// Applies `method`'s vision-side reduction and the projector to an encoded image.
    pub fn reduce(&self, v: &VisionFeatures, method: &Method) -> Result<EncodedImage> {
        method.validate()?;
        let (h, w) = v.grid;
        let n = h * w;
        let singletons = |kept: &[usize]| kept.iter().map(|&i| vec![i]).collect::<Vec<_>>();
        let gather = |kept: Vec<usize>| -> Result<(VisionTokens, Vec<Vec<usize>>)> {
            let idx = crate::index_tensor(&kept, v.features.device())?;
            Ok((VisionTokens::Features(v.features.index_select(&idx, 0)?), singletons(&kept)))
        };
        let t0 = Instant::now();
        let mut pillars = Vec::new();
        let (tokens, sources) = match method {
            Method::Nuwa(c) if c.stages != nuwa::Stages::Two => {
                let m = v.similarity.as_ref().ok_or_else(|| {
                    Error::InvalidArgument("Nüwa stage 1 needs the similarity features: encode with similarity".into())
                })?;
                let s1 = nuwa::stage1(&v.saliency, &v.features, m, (h, w), &nuwa::budgets(c.budget, c.stages, h, w), c)?;
                pillars = s1.anchors.iter().zip(&s1.pillars).filter(|(_, &p)| p).map(|(&a, _)| a).collect();
                (VisionTokens::Features(s1.tokens), singletons(&s1.anchors))
            }
            Method::VisionZip { budget } => {
                let (dominant, contextual) = visionzip::split(*budget);
                let sel = visionzip::select(&v.saliency, &v.mean_keys, dominant, contextual)?;
                let (features, sources) = visionzip::tokens(&sel, &v.features, &v.cls_feature)?;
                (VisionTokens::Features(features), sources)
            }
            Method::Pool { budget } => {
                let (ho, wo) = pool::output_grid(*budget, h, w);
                let cells = pool::windows(h, w, ho, wo);
                (VisionTokens::Features(pool::pool(&v.features, &cells)?), cells)
            }
            Method::Random { budget, seed } => gather(random::indices(n, *budget, *seed))?,
            Method::Manual { keep } => gather(random::manual(keep, n)?)?,
            Method::VisPruner { budget } => {
                let heads = self.model.config.vision_config.num_attention_heads as f32;
                let attn: Vec<f32> = v.saliency.iter().map(|s| s / heads).collect();
                let rows = v.features.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                gather(vispruner::select(&attn, &rows, *budget, 0.5).0)?
            }
            Method::DivPrune { budget } => {
                let all = self.model.projector.forward(&v.features)?;
                let mut kept = divprune::select(&all, *budget)?;
                kept.sort_unstable();
                let idx = crate::index_tensor(&kept, all.device())?;
                (VisionTokens::Projected(all.index_select(&idx, 0)?), singletons(&kept))
            }
            _ => (VisionTokens::Features(v.features.clone()), singletons(&(0..n).collect::<Vec<_>>())),
        };
        let reduce_ms = ms(t0);
        let mut e = self.encoded_from(v, tokens, sources)?;
        e.pillars = pillars;
        e.stage1_ms = match (needs_similarity(method), e.sources.len() < n) {
            (true, _) => reduce_ms + v.similarity_ms,
            (false, true) => reduce_ms,
            (false, false) => 0.0,
        };
        Ok(e)
    }

    /// Tokenises, encodes and runs the prompt through the decoder.
    pub fn prefill(&self, req: &GenerateRequest) -> Result<Prefill> {
        let prompt = self.tokenizer()?.prompt(&req.prompt, req.image.is_some())?;
        let encoded = match &req.image {
            None => None,
            Some(ImageInput::Pixels(p)) => Some(self.encode_image(&check_pixels(p, &self.model.config.vision_config)?, &req.method)?),
            Some(ImageInput::Path(path)) => {
                let (pixels, geometry) = self.load_pixels(path)?;
                let mut v = self.encode_vision(&pixels, needs_similarity(&req.method))?;
                v.geometry = Some(geometry);
                Some(self.reduce(&v, &req.method)?)
            }
        };
        let policy = req.positions.unwrap_or_else(|| req.method.default_positions());
        self.prefill_with(&prompt, encoded, &req.method, policy)
    }

    /// Prefill from an already tokenised prompt and encoded image (so an image can be encoded once and
    /// asked several questions).
    pub fn prefill_encoded(&self, prompt: &PromptTokens, encoded: Option<EncodedImage>, method: &Method) -> Result<Prefill> {
        self.prefill_with(prompt, encoded, method, method.default_positions())
    }

    /// Prefill with an explicit position policy for the vision tokens and the text after them.
    pub fn prefill_with(
        &self,
        prompt: &PromptTokens,
        encoded: Option<EncodedImage>,
        method: &Method,
        policy: PositionPolicy,
    ) -> Result<Prefill> {
        let dropper = match &encoded {
            Some(e) => method.dropper(self.span(prompt, e, policy), self.model.llm.config().num_hidden_layers)?,
            None => None,
        };
        self.prefill_custom(prompt, encoded, method, policy, dropper)
    }

    /// Where an image's tokens sit in the decoder's sequence for `prompt`.
    pub fn span(&self, prompt: &PromptTokens, e: &EncodedImage, policy: PositionPolicy) -> Span {
        Span { start: prompt.prefix.len(), tokens: e.sources.clone(), policy, grid: e.grid, suffix_len: prompt.suffix.len() }
    }

    /// Prefill with any in-decoder dropper; `method` only labels the report.
    pub fn prefill_custom(
        &self,
        prompt: &PromptTokens,
        encoded: Option<EncodedImage>,
        method: &Method,
        policy: PositionPolicy,
        mut dropper: Option<Box<dyn VisionDropper>>,
    ) -> Result<Prefill> {
        let seq = self.sequence(prompt, encoded.as_ref(), policy)?;
        let llm = &self.model.llm;
        let mut cache = llm.new_cache(0);
        let t0 = Instant::now();
        let logits = llm.forward(&seq.embeds, &seq.positions, &mut cache, dropper.as_deref_mut().map(|d| d as &mut dyn TokenDropper))?;
        let prefill_ms = ms(t0);
        let cuts = dropper.as_ref().map(|d| d.records().to_vec()).unwrap_or_default();
        let vision = encoded.as_ref().map(|e| self.report(e, method, policy, cuts));
        let timings = Timings {
            vision_ms: encoded.as_ref().map_or(0.0, |e| e.vision_ms),
            stage1_ms: encoded.as_ref().map_or(0.0, |e| e.stage1_ms),
            prefill_ms,
            decode_ms_per_token: 0.0,
        };
        Ok(Prefill {
            logits,
            cache,
            next_position: seq.next_position,
            positions: seq.positions,
            prompt_tokens: prompt.prefix.len() + prompt.suffix.len(),
            vision,
            encoded,
            timings,
        })
    }

    /// An encoded image from a vision-side selection: `features` (K, vision hidden) before the
    /// projector, or `projected` (K, text hidden) tokens already in the decoder's space, with the
    /// patches each token stands for.
    pub fn encoded_from(&self, v: &VisionFeatures, tokens: VisionTokens, sources: Vec<Vec<usize>>) -> Result<EncodedImage> {
        let (features, tokens) = match tokens {
            VisionTokens::Features(f) => {
                let projected = self.model.projector.forward(&f)?;
                (f, projected)
            }
            VisionTokens::Projected(p) => (p.clone(), p),
        };
        let mut kept: Vec<usize> = sources.iter().flatten().copied().collect();
        kept.sort_unstable();
        kept.dedup();
        Ok(EncodedImage {
            grid: v.grid,
            kept,
            sources,
            pillars: Vec::new(),
            saliency: v.saliency.clone(),
            features,
            tokens,
            geometry: v.geometry,
            vision_ms: v.vision_ms,
            stage1_ms: 0.0,
        })
    }

    /// Runs one generated token through the decoder at `position`, returning the next logits.
    pub fn decode_step(&self, token: u32, position: usize, cache: &mut llama::Cache) -> Result<Tensor> {
        let embeds = self.model.llm.embed(&[token])?;
        self.model.llm.forward(&embeds, &[position as u32], cache, None)
    }

    /// Generates an answer, calling `on_text` with each new piece of text as it is decoded.
    pub fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str)) -> Result<Generation> {
        if req.max_new_tokens == 0 {
            return Err(Error::InvalidArgument("--max-new-tokens must be at least 1".into()));
        }
        let state = self.prefill(req)?;
        self.generate_from(state, &req.sampling, req.max_new_tokens, on_text)
    }

    /// Decodes from a prefill state (see [`Engine::prefill_encoded`]) until EOS, `max_new_tokens` or a
    /// full context.
    pub fn generate_from(
        &self,
        mut state: Prefill,
        sampling: &Sampling,
        max_new_tokens: usize,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        if max_new_tokens == 0 {
            return Err(Error::InvalidArgument("--max-new-tokens must be at least 1".into()));
        }
        let context = self.model.llm.config().max_position_embeddings;
        let mut sampler = Sampler::new(sampling)?;
        let mut tokens = Vec::new();
        let mut printed = 0;
        let mut stop_reason = "length";
        let t0 = Instant::now();
        let mut logits = state.logits.clone();
        loop {
            let token = sampler.sample(&logits)?;
            if self.eos_token_ids.contains(&token) {
                stop_reason = "eos";
                break;
            }
            tokens.push(token);
            let text = self.tokenizer()?.decode(&tokens)?;
            // Hold back an incomplete UTF-8 sequence until its last byte arrives.
            if !text.ends_with('\u{FFFD}') && text.len() > printed {
                on_text(&text[printed..]);
                printed = text.len();
            }
            if tokens.len() >= max_new_tokens {
                break;
            }
            if state.next_position >= context {
                stop_reason = "context";
                break;
            }
            logits = self.decode_step(token, state.next_position, &mut state.cache)?;
            state.next_position += 1;
        }
        let decode_steps = tokens.len().saturating_sub(1).max(1);
        state.timings.decode_ms_per_token = if tokens.len() > 1 { ms(t0) / decode_steps as f64 } else { 0.0 };
        let text = self.tokenizer()?.decode(&tokens)?;
        if text.len() > printed {
            on_text(&text[printed..]);
        }
        Ok(Generation {
            text,
            tokens,
            prompt_tokens: state.prompt_tokens,
            stop_reason,
            timings: state.timings,
            vision: state.vision,
            kv_cache_bytes: state.cache.bytes(),
            encoded: state.encoded,
        })
    }

    /// Lays out prefix, vision tokens and suffix, numbered as `policy` says.
    fn sequence(&self, prompt: &PromptTokens, encoded: Option<&EncodedImage>, policy: PositionPolicy) -> Result<Sequence> {
        let llm = &self.model.llm;
        let (p, s) = (prompt.prefix.len(), prompt.suffix.len());
        let n_patches = encoded.map_or(0, |e| e.grid.0 * e.grid.1);
        // Positions as the unpruned model would use them bound the context, whatever is kept.
        let needed = p + n_patches + s;
        let context = llm.config().max_position_embeddings;
        if needed > context {
            return Err(Error::ContextOverflow { needed, context });
        }
        let mut parts = vec![llm.embed(&prompt.prefix)?];
        if let Some(e) = encoded {
            parts.push(e.tokens.to_dtype(llm.dtype())?);
        }
        if s > 0 {
            parts.push(llm.embed(&prompt.suffix)?);
        }
        let reps: Vec<usize> = encoded.map_or(Vec::new(), |e| e.sources.iter().map(|t| t.iter().copied().min().unwrap_or(0)).collect());
        let positions = layout_positions(policy, p, &reps, n_patches, s);
        let next_position = match policy {
            PositionPolicy::Contiguous => positions.len(),
            PositionPolicy::Original | PositionPolicy::Stretched => needed,
        };
        Ok(Sequence { embeds: Tensor::cat(&parts, 0)?, positions, next_position })
    }

    fn report(&self, e: &EncodedImage, method: &Method, positions: PositionPolicy, cuts: Vec<CutRecord>) -> VisionReport {
        let depth = self.model.llm.config().num_hidden_layers;
        // Tokens entering each layer: the vision-side count until the first cut, then each cut's.
        let mut per_layer = vec![e.sources.len(); depth];
        for c in &cuts {
            per_layer[c.layer..].fill(c.kept.len());
        }
        let survivors = cuts.last().map_or_else(|| e.sources.clone(), |c| c.kept.clone());
        VisionReport {
            grid: [e.grid.0, e.grid.1],
            method: method.name(),
            budget: method.budget(),
            positions,
            k1: e.sources.len(),
            k2: cuts.last().map(|c| c.kept.len()),
            stage1: e.kept.clone(),
            pillars: e.pillars.clone(),
            stage2: survivors.iter().flatten().copied().collect(),
            stage2_layer: cuts.last().map(|c| c.layer),
            avg_vision_tokens: per_layer.iter().sum::<usize>() as f64 / depth as f64,
            vision_tokens: e.sources.clone(),
            cuts,
        }
    }
}

/// Tokens a vision-side method hands on.
#[derive(Debug, Clone)]
pub enum VisionTokens {
    /// Before the projector, (K, vision hidden).
    Features(Tensor),
    /// After the projector, (K, text hidden).
    Projected(Tensor),
}

/// One vision-encoder pass over an image, before any token reduction.
#[derive(Debug, Clone)]
pub struct VisionFeatures {
    pub grid: (usize, usize),
    /// Projector input for every patch, (N, vision hidden).
    pub features: Tensor,
    /// Mean of the trailing hidden states, (N, vision hidden), when asked for.
    pub similarity: Option<Tensor>,
    /// Time spent on that mean: part of the cost of the method that compares patches with it.
    pub similarity_ms: f64,
    /// Per-patch [CLS] saliency, summed over heads.
    pub saliency: Vec<f32>,
    /// The [CLS] row of the projector's input layer, (1, vision hidden).
    pub cls_feature: Tensor,
    /// Keys of the saliency layer averaged over heads, [CLS] first: (1 + N, head_dim).
    pub mean_keys: Tensor,
    pub geometry: Option<Geometry>,
    pub vision_ms: f64,
}

/// Whether a method's vision side compares patches by their trailing hidden states.
pub fn needs_similarity(method: &Method) -> bool {
    matches!(method, Method::Nuwa(c) if c.stages != nuwa::Stages::Two)
}

struct Sequence {
    embeds: Tensor,
    positions: Vec<u32>,
    next_position: usize,
}

fn check_pixels(p: &Tensor, cfg: &clip::Config) -> Result<Tensor> {
    let p = if p.rank() == 4 && p.dim(0)? == 1 { p.squeeze(0)? } else { p.clone() };
    let want = (cfg.num_channels, cfg.image_size, cfg.image_size);
    if p.dims() != [want.0, want.1, want.2] {
        return Err(Error::InvalidArgument(format!(
            "pixel values have shape {:?}; this model expects [{}, {}, {}] or [1, {}, {}, {}]",
            p.dims(),
            want.0,
            want.1,
            want.2,
            want.0,
            want.1,
            want.2
        )));
    }
    Ok(p.to_dtype(DType::F32)?)
}

/// Reads the `pixel_values` tensor of a safetensors file.
pub fn read_pixel_values(path: &Path, device: &Device) -> Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, device).map_err(|e| Error::io(path, format!("cannot read safetensors: {e}")))?;
    tensors
        .get("pixel_values")
        .cloned()
        .ok_or_else(|| Error::config(path, "no tensor named `pixel_values` (expected [3,H,W] or [1,3,H,W])"))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
