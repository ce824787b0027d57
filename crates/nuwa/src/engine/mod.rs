//! The pipeline: image → the family's vision encoder → token reduction (the method's, in `prune/`) →
//! projector → sequence with positions → decoder (with the method's mid-stack cuts) → a [`Session`]
//! that decodes token by token. This is the one place where a pruning method meets a model's hooks,
//! and it names neither a method nor a family.

mod session;

pub use session::{Session, SessionOptions, Step, StopReason};

use crate::checkpoint::Checkpoint;
use crate::generation::Sampling;
use crate::hooks::TokenDropper;
use crate::layout::{Needs, Positions, Slot, VisionEvidence, VisualLayout};
pub use crate::models::LoadOptions;
use crate::models::{decoder, VisionLanguageModel};
use crate::preprocess::{self, Geometry};
use crate::prompt::{Conversation, PromptTokens, TextTokenizer};
use crate::prune::{representatives, CutRecord, Method, PositionPolicy, Span, VisionDropper, VisionTokens};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A loaded model ready to answer requests.
pub struct Engine {
    pub model: Box<dyn VisionLanguageModel>,
    /// Absent for random-weight benchmark models, which are fed token ids directly.
    pub tokenizer: Option<TextTokenizer>,
    eos_token_ids: Vec<u32>,
    device: Device,
}

/// Where the image comes from.
#[derive(Debug, Clone)]
pub enum ImageInput {
    Path(PathBuf),
    /// Already preprocessed pixel values in the encoder's input shape.
    Pixels(Tensor),
    /// Pixel values with the original image's size (width, height), which some families' token layout
    /// depends on (LLaVA-NeXT: `image_sizes`).
    SizedPixels {
        pixels: Tensor,
        width: u32,
        height: u32,
    },
    /// Pixel values with their patch grid (t, rows, cols) instead of the image's size (Qwen2.5-VL's
    /// `image_grid_thw`).
    GridPixels {
        pixels: Tensor,
        grid_thw: [usize; 3],
    },
    /// A decoded image (e.g. from a request body).
    Decoded(image::RgbImage),
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
    /// Generation stops before the first of these strings appears in the answer.
    pub stop: Vec<String>,
}

/// What the vision side hands to the decoder for one image.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// The image's tokens before reduction.
    pub layout: VisualLayout,
    /// Kept slots, ascending.
    pub kept: Vec<usize>,
    /// Per token entering the decoder, the slots it stands for (empty for a summary token).
    pub sources: Vec<Vec<usize>>,
    /// Stage-1 pillars (slots), for methods that have them.
    pub pillars: Vec<usize>,
    /// Per-slot saliency (the summary token's attention summed over heads) when the model gives one.
    pub saliency: Option<Vec<f32>>,
    /// Vision features of the kept tokens before the projector, (K, vision hidden).
    pub features: Tensor,
    /// The same after the projector, (K, text hidden).
    pub tokens: Tensor,
    /// How the original image maps onto the model's input (absent for raw pixel values).
    pub geometry: Option<Geometry>,
    /// Per grid of `layout`, where it lies on the original image (`[x0, y0, x1, y1]` pixels); empty
    /// without a geometry.
    pub windows: Vec<[f64; 4]>,
    pub vision_ms: f64,
    pub stage1_ms: f64,
}

impl EncodedImage {
    /// (rows, cols) of the image's first grid (the one LLaVA-1.5 has).
    pub fn grid(&self) -> (usize, usize) {
        self.layout.grids.first().map_or((0, 0), |g| (g.rows, g.cols))
    }
}

/// What pruning did to one request, as reported to users.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VisionReport {
    /// The first grid's (rows, cols): the whole layout for single-grid families.
    pub grid: [usize; 2],
    /// Every grid of the layout (LLaVA-NeXT: the base view, then the unpadded crop grid).
    pub grids: Vec<[usize; 2]>,
    /// Patches of each grid among the slots kept by stage 1.
    pub kept_per_grid: Vec<usize>,
    /// Row-end newline tokens entering the decoder, and surviving its last cut.
    pub newlines: usize,
    pub newlines_surviving: usize,
    pub method: &'static str,
    /// The budget that ran: the one asked for, capped at the image's vision tokens.
    pub budget: Option<usize>,
    /// The budget asked for, when it was above the image's vision tokens (and so capped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_requested: Option<usize>,
    /// The keep ratio that ran, for a method set by one (a percentage `--budget`; Nüwa on Qwen2.5-VL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_ratio: Option<f64>,
    pub positions: PositionPolicy,
    pub k1: usize,
    pub k2: Option<usize>,
    /// Slots kept by stage 1, ascending.
    pub stage1: Vec<usize>,
    pub pillars: Vec<usize>,
    /// Slots that survive stage 2 (equal to `stage1` without a cut).
    pub stage2: Vec<usize>,
    pub stage2_layer: Option<usize>,
    /// Mean number of vision tokens over the decoder's layers.
    pub avg_vision_tokens: f64,
    /// Vision tokens entering the decoder: per token, the slots it stands for.
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
    pub cache: decoder::Cache,
    /// Position id of the next token (one past the unpruned sequence for position-keeping policies).
    pub next_position: u32,
    /// Position ids of the prefill sequence as it entered the decoder.
    pub positions: Positions,
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
    pub stop_reason: StopReason,
    pub timings: Timings,
    pub vision: Option<VisionReport>,
    pub kv_cache_bytes: usize,
    /// The encoded image (kept slots, saliency, geometry) for overlays; not serialised.
    #[serde(skip)]
    pub encoded: Option<EncodedImage>,
}

impl Engine {
    /// Loads a hub checkpoint directory of any supported family (detected from its `config.json`).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let ckpt = Checkpoint::open(dir)?;
        let family = crate::models::detect(&ckpt)?;
        let model = (family.load)(&ckpt, opts)?;
        let tokenizer = TextTokenizer::from_file(&ckpt.tokenizer_file)?;
        let vocab = model.decoder().config().vocab_size();
        if tokenizer.max_token_id() as usize >= vocab {
            return Err(Error::Tokenizer {
                path: ckpt.tokenizer_file.clone(),
                msg: format!(
                    "produces ids up to {} but the model's vocab_size is {vocab} (a tokenizer from another model?)",
                    tokenizer.max_token_id()
                ),
            });
        }
        let eos = if ckpt.eos_token_ids.is_empty() {
            model.default_eos(Some(&tokenizer))
        } else {
            ckpt.eos_token_ids.clone()
        };
        Ok(Self::from_parts(model, Some(tokenizer), eos, opts.device.clone()))
    }

    pub fn from_parts(
        model: Box<dyn VisionLanguageModel>,
        tokenizer: Option<TextTokenizer>,
        eos_token_ids: Vec<u32>,
        device: Device,
    ) -> Self {
        Self { model, tokenizer, eos_token_ids, device }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn decoder(&self) -> &decoder::Decoder {
        self.model.decoder()
    }

    /// The grounding question the model's family asks for `expression`.
    pub fn grounding_prompt(&self, expression: &str) -> String {
        self.model.grounding_prompt(expression)
    }

    /// Token ids that end a generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Unsupported("this engine has no tokenizer (a random-weight preset): pass token ids".into())
        })
    }

    /// The family's conversation for one question, tokenised.
    pub fn prompt(&self, question: &str, with_image: bool) -> Result<PromptTokens> {
        self.conversation_prompt(&Conversation::question(question, with_image))
    }

    /// The family's chat template over `conversation`, tokenised.
    pub fn conversation_prompt(&self, conversation: &Conversation) -> Result<PromptTokens> {
        self.model.prompt(self.tokenizer()?, conversation)
    }

    /// Reads an image file and preprocesses it as the checkpoint's processor does.
    pub fn load_pixels(&self, path: &Path) -> Result<(Tensor, Geometry)> {
        self.pixels(&preprocess::load_image(path)?)
    }

    /// Preprocesses a decoded image as the checkpoint's processor does, with the geometry that maps the
    /// model's input back onto the image.
    pub fn pixels(&self, img: &image::RgbImage) -> Result<(Tensor, Geometry)> {
        self.model.preprocess(img, &self.device)
    }

    /// Encodes one image and reduces its tokens as `method` says, up to (not including) the decoder.
    /// `image_size`: the original (width, height), where the family's layout depends on it.
    pub fn encode_image(
        &self,
        pixels: &Tensor,
        image_size: Option<(u32, u32)>,
        method: &Method,
    ) -> Result<EncodedImage> {
        let evidence = self.encode_vision(pixels, image_size, method.needs())?;
        self.reduce(&evidence, method)
    }

    /// Runs the vision encoder once, keeping what methods with `needs` may ask for. One result serves
    /// every pruning configuration with those needs ([`Engine::reduce`]).
    pub fn encode_vision(
        &self,
        pixels: &Tensor,
        image_size: Option<(u32, u32)>,
        needs: Needs,
    ) -> Result<VisionEvidence> {
        self.model.encode(pixels, image_size, needs)
    }

    /// Applies `method`'s vision-side reduction and the projector to an encoded image.
    pub fn reduce(&self, ev: &VisionEvidence, method: &Method) -> Result<EncodedImage> {
        let n = ev.layout.len();
        let t0 = Instant::now();
        let n_slots: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
        let r = method.reduce(ev, &|| self.embed(&ev.layout, &ev.features, &n_slots))?;
        let reduce_ms = ms(t0);
        let mut e = self.encoded_from(ev, r.tokens, r.sources)?;
        e.pillars = r.pillars;
        e.stage1_ms = match (method.needs().similarity, e.sources.len() < n) {
            (true, _) => reduce_ms + ev.similarity_ms,
            (false, true) => reduce_ms,
            (false, false) => 0.0,
        };
        Ok(e)
    }

    /// Tokenises, encodes and runs the prompt through the decoder.
    pub fn prefill(&self, req: &GenerateRequest) -> Result<Prefill> {
        let prompt = self.prompt(&req.prompt, req.image.is_some())?;
        self.prefill_image(&prompt, req.image.as_ref(), &req.method, req.positions)
    }

    /// Encodes `image` (if any), reduces it by `method` and runs `prompt` through the decoder, numbered
    /// by `positions` or the method's own policy.
    pub fn prefill_image(
        &self,
        prompt: &PromptTokens,
        image: Option<&ImageInput>,
        method: &Method,
        positions: Option<PositionPolicy>,
    ) -> Result<Prefill> {
        let decoded = |img: &image::RgbImage| -> Result<EncodedImage> {
            let (pixels, geometry) = self.pixels(img)?;
            let mut v = self.encode_vision(&pixels, Some((geometry.width, geometry.height)), method.needs())?;
            v.geometry = Some(geometry);
            self.reduce(&v, method)
        };
        let encoded = match image {
            None => None,
            Some(ImageInput::Pixels(p)) => Some(self.encode_image(&self.model.check_pixels(p)?, None, method)?),
            Some(ImageInput::SizedPixels { pixels, width, height }) => {
                Some(self.encode_image(&self.model.check_pixels(pixels)?, Some((*width, *height)), method)?)
            }
            Some(ImageInput::GridPixels { pixels, grid_thw }) => {
                let size = self.model.size_of_grid(*grid_thw)?;
                Some(self.encode_image(&self.model.check_pixels(pixels)?, Some(size), method)?)
            }
            Some(ImageInput::Path(path)) => Some(decoded(&preprocess::load_image(path)?)?),
            Some(ImageInput::Decoded(img)) => Some(decoded(img)?),
        };
        self.prefill_with(prompt, encoded, method, positions.unwrap_or_else(|| method.default_positions()))
    }

    /// Prefill from an already tokenised prompt and encoded image (so an image can be encoded once and
    /// asked several questions).
    pub fn prefill_encoded(
        &self,
        prompt: &PromptTokens,
        encoded: Option<EncodedImage>,
        method: &Method,
    ) -> Result<Prefill> {
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
            Some(e) => method.dropper(self.span(prompt, e, policy), self.decoder().config().num_hidden_layers)?,
            None => None,
        };
        self.prefill_custom(prompt, encoded, method, policy, dropper)
    }

    /// Where an image's tokens sit in the decoder's sequence for `prompt`.
    pub fn span(&self, prompt: &PromptTokens, e: &EncodedImage, policy: PositionPolicy) -> Span {
        let sequence = self.model.sequence_layout(prompt, Some(&e.layout));
        Span { tokens: e.sources.clone(), policy, sequence, layout: e.layout.clone(), family: self.model.family() }
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
        let (embeds, positions, next_position) = self.sequence(prompt, encoded.as_ref(), policy)?;
        let llm = self.decoder();
        let mut cache = llm.new_cache(0);
        let t0 = Instant::now();
        let logits =
            llm.forward(&embeds, &positions, &mut cache, dropper.as_deref_mut().map(|d| d as &mut dyn TokenDropper))?;
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
            next_position,
            positions,
            prompt_tokens: prompt.prefix.len() + prompt.suffix.len(),
            vision,
            encoded,
            timings,
        })
    }

    /// An encoded image from a vision-side selection: `tokens` before or after the projector, with the
    /// slots each token stands for.
    pub fn encoded_from(
        &self,
        v: &VisionEvidence,
        tokens: VisionTokens,
        sources: Vec<Vec<usize>>,
    ) -> Result<EncodedImage> {
        let (features, tokens) = match tokens {
            VisionTokens::Features(f) => {
                let projected = self.embed(&v.layout, &f, &sources)?;
                (f, projected)
            }
            VisionTokens::Projected(p) => (p.clone(), p),
        };
        let mut kept: Vec<usize> = sources.iter().flatten().copied().collect();
        kept.sort_unstable();
        kept.dedup();
        Ok(EncodedImage {
            layout: v.layout.clone(),
            kept,
            sources,
            pillars: Vec::new(),
            saliency: v.saliency.as_ref().map(|s| s.summed.clone()),
            features,
            tokens,
            geometry: v.geometry,
            windows: v.geometry.map_or_else(Vec::new, |g| self.model.grid_windows(&g, &v.layout)),
            vision_ms: v.vision_ms,
            stage1_ms: 0.0,
        })
    }

    /// Vision tokens in the decoder's space: `features` projected, except a token standing for exactly
    /// one newline slot, which takes the model's newline embedding.
    fn embed(&self, layout: &VisualLayout, features: &Tensor, sources: &[Vec<usize>]) -> Result<Tensor> {
        let projected = self.model.project(features)?;
        let Some(newline) = self.model.newline_embedding() else { return Ok(projected) };
        let is_newline: Vec<u8> = sources
            .iter()
            .map(|s| {
                u8::from(matches!(s.as_slice(), [i] if matches!(layout.slots.get(*i), Some(Slot::Newline { .. }))))
            })
            .collect();
        if !is_newline.contains(&1) {
            return Ok(projected);
        }
        let shape = projected.shape().clone();
        let mask = Tensor::from_vec(is_newline, (sources.len(), 1), projected.device())?.broadcast_as(&shape)?;
        let newline = newline.to_dtype(projected.dtype())?.reshape((1, ()))?.broadcast_as(&shape)?;
        Ok(mask.where_cond(&newline, &projected)?)
    }

    /// A decoding session from a prefill state: call [`Session::step`] for each token.
    pub fn session(&self, state: Prefill, sampling: &Sampling, opts: SessionOptions) -> Result<Session<'_>> {
        Session::new(self, state, sampling, opts)
    }

    /// Generates an answer, calling `on_text` with each new piece of text as it is decoded.
    pub fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str)) -> Result<Generation> {
        let opts = SessionOptions { max_new_tokens: req.max_new_tokens, stop: req.stop.clone(), ..Default::default() };
        opts.validate()?;
        let state = self.prefill(req)?;
        self.session(state, &req.sampling, opts)?.run(on_text)
    }

    /// Decodes from a prefill state (see [`Engine::prefill_encoded`]) until EOS, `max_new_tokens` or a
    /// full context.
    pub fn generate_from(
        &self,
        state: Prefill,
        sampling: &Sampling,
        max_new_tokens: usize,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.session(state, sampling, SessionOptions { max_new_tokens, ..Default::default() })?.run(on_text)
    }

    /// Lays out prefix, vision tokens and suffix, numbered as `policy` says: the embeddings, their
    /// positions and the position of the first generated token.
    fn sequence(
        &self,
        prompt: &PromptTokens,
        encoded: Option<&EncodedImage>,
        policy: PositionPolicy,
    ) -> Result<(Tensor, Positions, u32)> {
        let llm = self.decoder();
        let layout = self.model.sequence_layout(prompt, encoded.map(|e| &e.layout));
        // Positions as the unpruned model would use them bound the context, whatever is kept.
        let needed = layout.unpruned.max().map_or(0, |m| m as usize + 1);
        let context = llm.config().max_position_embeddings;
        if needed > context {
            return Err(Error::ContextOverflow { needed, context });
        }
        let mut parts = vec![llm.embed(&prompt.prefix)?];
        if let Some(e) = encoded {
            parts.push(e.tokens.to_dtype(llm.dtype())?);
        }
        if !prompt.suffix.is_empty() {
            parts.push(llm.embed(&prompt.suffix)?);
        }
        let reps = encoded.map_or(Vec::new(), |e| representatives(&e.sources));
        let positions = layout.assign(policy, &reps)?;
        let next = layout.next_position(policy, &positions);
        Ok((Tensor::cat(&parts, 0)?, positions, next))
    }

    fn report(
        &self,
        e: &EncodedImage,
        method: &Method,
        positions: PositionPolicy,
        cuts: Vec<CutRecord>,
    ) -> VisionReport {
        let depth = self.decoder().config().num_hidden_layers;
        // Tokens entering each layer: the vision-side count until the first cut, then each cut's.
        let mut per_layer = vec![e.sources.len(); depth];
        for c in &cuts {
            per_layer[c.layer..].fill(c.kept.len());
        }
        let survivors = cuts.last().map_or_else(|| e.sources.clone(), |c| c.kept.clone());
        let keep_ratio = method.keep_ratio(self.model.family());
        let budget = method.budget().filter(|_| keep_ratio.is_none());
        let (rows, cols) = e.grid();
        let newline = |s: &usize| matches!(e.layout.slots[*s], Slot::Newline { .. });
        let kept_per_grid = (0..e.layout.grids.len())
            .map(|g| {
                e.kept.iter().filter(|&&s| matches!(e.layout.slots[s], Slot::Patch { grid, .. } if grid == g)).count()
            })
            .collect();
        VisionReport {
            grid: [rows, cols],
            grids: e.layout.grids.iter().map(|g| [g.rows, g.cols]).collect(),
            kept_per_grid,
            newlines: e.sources.iter().flatten().filter(|s| newline(s)).count(),
            newlines_surviving: survivors.iter().flatten().filter(|s| newline(s)).count(),
            method: method.name(),
            budget: budget.map(|b| b.min(e.layout.len())),
            budget_requested: budget.filter(|&b| b > e.layout.len()),
            keep_ratio,
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

/// The `pixel_values` tensor of a safetensors file, with the original size when the file has
/// `image_sizes` (`[[height, width]]`, as transformers' LLaVA-NeXT processor writes it).
pub fn read_pixel_values(path: &Path, device: &Device) -> Result<ImageInput> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::io(path, format!("cannot read safetensors: {e}")))?;
    let pixels = tensors
        .get("pixel_values")
        .cloned()
        .ok_or_else(|| Error::config(path, "no tensor named `pixel_values` (expected [3,H,W] or [1,3,H,W])"))?;
    if let Some(grid) = tensors.get("image_grid_thw") {
        let bad = || Error::config(path, "`image_grid_thw` must hold one [t, rows, cols] triple of positive integers");
        let v: Vec<i64> =
            grid.to_dtype(candle_core::DType::I64).and_then(|t| t.flatten_all()?.to_vec1()).map_err(|_| bad())?;
        return match v.as_slice() {
            &[t, h, w] if [t, h, w].iter().all(|&x| x > 0 && x <= 1 << 20) => {
                Ok(ImageInput::GridPixels { pixels, grid_thw: [t as usize, h as usize, w as usize] })
            }
            _ => Err(bad()),
        };
    }
    let Some(sizes) = tensors.get("image_sizes") else { return Ok(ImageInput::Pixels(pixels)) };
    let bad = || Error::config(path, "`image_sizes` must hold one [height, width] pair of positive integers");
    let hw: Vec<i64> =
        sizes.to_dtype(candle_core::DType::I64).and_then(|t| t.flatten_all()?.to_vec1()).map_err(|_| bad())?;
    match hw.as_slice() {
        &[h, w] if h > 0 && w > 0 && h <= u32::MAX as i64 && w <= u32::MAX as i64 => {
            Ok(ImageInput::SizedPixels { pixels, width: w as u32, height: h as u32 })
        }
        _ => Err(bad()),
    }
}

pub(crate) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
