//! LLaVA's image processor: `expand2square` padding with the mean colour, then transformers'
//! `CLIPImageProcessor` (PIL backend): resize (Pillow's `Resample.c`, bit-exact), centre crop, rescale
//! and normalise, producing a CHW `f32` tensor — and the vicuna_v1 conversation LLaVA-1.5 was trained with.

use crate::preprocess::{expand_to_square, resize_padded, Geometry, PreprocessError, Resample};
use crate::prompt::{Conversation, Message, Part, Role};
use image::{Rgb, RgbImage};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use std::path::Path;

/// `size` in the config: what the resize step targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `{"shortest_edge": n}` (or a bare integer): shortest edge becomes `n`, aspect kept.
    ShortestEdge(u32),
    /// `{"height": h, "width": w}`: exact output size.
    Exact { height: u32, width: u32 },
}

impl Size {
    /// Output `(width, height)` for an input of `width`×`height`, as transformers'
    /// `get_resize_output_image_size(default_to_square=False)` computes it.
    pub fn output_size(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Size::Exact { height, width } => (width, height),
            Size::ShortestEdge(short) => {
                let (s, l) = (width.min(height), width.max(height));
                // Python: int(short * long / short_in), a true division then truncation.
                let long = (short as f64 * l as f64 / s.max(1) as f64) as u32;
                if width <= height {
                    (short, long)
                } else {
                    (long, short)
                }
            }
        }
    }
}

/// `crop_size` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropSize {
    pub height: u32,
    pub width: u32,
}

/// The subset of a Hugging Face `preprocessor_config.json` that CLIPImageProcessor uses.
///
/// Missing (or `null`) keys take CLIPImageProcessor's defaults; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub size: Size,
    pub crop_size: CropSize,
    pub do_resize: bool,
    pub do_center_crop: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    /// Accepted for completeness: images are always RGB here (see [`decode_image`]).
    pub do_convert_rgb: bool,
    pub rescale_factor: f64,
    pub resample: Resample,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            image_mean: [0.48145466, 0.4578275, 0.40821073],
            image_std: [0.26862954, 0.26130258, 0.27577711],
            size: Size::ShortestEdge(224),
            crop_size: CropSize { height: 224, width: 224 },
            do_resize: true,
            do_center_crop: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
            rescale_factor: 1.0 / 255.0,
            resample: Resample::Bicubic,
        }
    }
}

impl PreprocessConfig {
    /// Reads and validates a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, PreprocessError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|cause| PreprocessError::ReadConfig { path: shown.clone(), cause })?;
        serde_json::from_str(&text).map_err(|e| PreprocessError::Config { path: shown, message: e.to_string() })
    }

    /// (width, height) of what this config makes of a padded square image, when that does not depend
    /// on the image.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        if self.do_center_crop {
            Some((self.crop_size.width, self.crop_size.height))
        } else if self.do_resize {
            let side = match self.size {
                Size::ShortestEdge(n) => n,
                Size::Exact { height, width } => return Some((width, height)),
            };
            Some((side, side))
        } else {
            None
        }
    }

    /// LLaVA's padding colour: `tuple(int(x * 255) for x in image_mean)`.
    pub fn pad_color(&self) -> [u8; 3] {
        // `as u8` truncates like Python's int() and saturates out-of-range means.
        self.image_mean.map(|m| (m * 255.0) as u8)
    }

    /// Builds the config key by key so that every error can name its field.
    fn from_map(map: &Map<String, Value>) -> Result<Self, String> {
        let mut cfg = Self::default();
        get(map, "image_mean", &mut cfg.image_mean)?;
        get(map, "image_std", &mut cfg.image_std)?;
        get(map, "do_resize", &mut cfg.do_resize)?;
        get(map, "do_center_crop", &mut cfg.do_center_crop)?;
        get(map, "do_rescale", &mut cfg.do_rescale)?;
        get(map, "do_normalize", &mut cfg.do_normalize)?;
        get(map, "do_convert_rgb", &mut cfg.do_convert_rgb)?;
        get(map, "rescale_factor", &mut cfg.rescale_factor)?;

        let mut resample = None;
        get(map, "resample", &mut resample)?;
        if let Some(code) = resample {
            cfg.resample = Resample::from_pil(code)?;
        }

        let mut size = None;
        get(map, "size", &mut size)?;
        if let Some(raw) = size {
            cfg.size = match raw {
                RawSize::Int(n) => Size::ShortestEdge(n),
                RawSize::Map { shortest_edge: Some(n), height: None, width: None } => Size::ShortestEdge(n),
                RawSize::Map { shortest_edge: None, height: Some(height), width: Some(width) } => {
                    Size::Exact { height, width }
                }
                RawSize::Map { .. } => {
                    return Err("field `size`: expected {\"shortest_edge\": n} or \
                                {\"height\": h, \"width\": w}"
                        .into())
                }
            };
        }

        let mut crop = None;
        get(map, "crop_size", &mut crop)?;
        if let Some(raw) = crop {
            cfg.crop_size = match raw {
                RawSize::Int(n) => CropSize { height: n, width: n },
                RawSize::Map { shortest_edge: None, height: Some(height), width: Some(width) } => {
                    CropSize { height, width }
                }
                RawSize::Map { .. } => return Err("field `crop_size`: expected {\"height\": h, \"width\": w}".into()),
            };
        }

        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let sizes_ok = match self.size {
            Size::ShortestEdge(n) => n > 0,
            Size::Exact { height, width } => height > 0 && width > 0,
        };
        if !sizes_ok {
            return Err("field `size`: expected positive dimensions".into());
        }
        if self.crop_size.height == 0 || self.crop_size.width == 0 {
            return Err("field `crop_size`: expected positive dimensions".into());
        }
        if self.image_std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(format!("field `image_std`: expected finite non-zero values, got {:?}", self.image_std));
        }
        if !self.image_mean.iter().all(|m| m.is_finite()) {
            return Err(format!("field `image_mean`: expected finite values, got {:?}", self.image_mean));
        }
        if !self.rescale_factor.is_finite() {
            return Err("field `rescale_factor`: expected a finite number".into());
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for PreprocessConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Self::from_map(&map).map_err(D::Error::custom)
    }
}

/// Both `size` and `crop_size` may be a bare integer or an object (transformers' `get_size_dict`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(u32),
    Map { shortest_edge: Option<u32>, height: Option<u32>, width: Option<u32> },
}

/// Overwrites `slot` with `map[key]` when present and not `null`.
fn get<T: DeserializeOwned>(map: &Map<String, Value>, key: &str, slot: &mut T) -> Result<(), String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => {
            *slot = T::deserialize(v).map_err(|e| format!("field `{key}`: {e}"))?;
            Ok(())
        }
    }
}

/// transformers' `center_crop` offset: `(size - crop) // 2` (floor division, negative when
/// the crop is larger and the image gets zero-padded).
fn crop_offset(size: u32, crop: u32) -> i64 {
    (size as i64 - crop as i64).div_euclid(2)
}

/// transformers' `center_crop` of a `width`×`height` image given by `pixel`, including its zero padding
/// when the image is smaller.
fn center_crop(width: u32, height: u32, crop: CropSize, pixel: impl Fn(u32, u32) -> Rgb<u8>) -> RgbImage {
    let (left, top) = (crop_offset(width, crop.width), crop_offset(height, crop.height));
    RgbImage::from_fn(crop.width, crop.height, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if (0..width as i64).contains(&sx) && (0..height as i64).contains(&sy) {
            pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Model input and how it relates to the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// CHW, `3 * height * width` values.
    pub pixels: Vec<f32>,
    pub height: u32,
    pub width: u32,
    pub geometry: Geometry,
}

/// Pads to a square (LLaVA), then resizes, centre-crops, rescales and normalises
/// (CLIPImageProcessor), following `cfg`'s `do_*` switches.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Preprocessed {
    // The padded square is only built when it is the output: an image within the pixel limit can pad to
    // a square far beyond it (a 4096×1 strip to 4096×4096).
    let color = cfg.pad_color();
    let mut geometry = Geometry::padded_square(img.width(), img.height());
    let side = geometry.side;
    let resized = cfg.do_resize.then(|| {
        let (w, h) = cfg.size.output_size(side, side);
        resize_padded(img, color, w, h, cfg.resample)
    });
    let (rw, rh) = resized.as_ref().map_or((side, side), |r| r.dimensions());
    let input = if cfg.do_center_crop {
        let crop = cfg.crop_size;
        let (sx, sy) = (side as f64 / rw.max(1) as f64, side as f64 / rh.max(1) as f64);
        let (left, top) = (crop_offset(rw, crop.width) as f64, crop_offset(rh, crop.height) as f64);
        geometry.input_window = [left * sx, top * sy, (left + crop.width as f64) * sx, (top + crop.height as f64) * sy];
        match &resized {
            Some(r) => center_crop(rw, rh, crop, |x, y| *r.get_pixel(x, y)),
            None => center_crop(side, side, crop, |x, y| {
                let (px, py) = (x.checked_sub(geometry.pad_x), y.checked_sub(geometry.pad_y));
                match (px, py) {
                    (Some(px), Some(py)) if px < img.width() && py < img.height() => *img.get_pixel(px, py),
                    _ => Rgb(color),
                }
            }),
        }
    } else {
        resized.unwrap_or_else(|| expand_to_square(img, color).0)
    };

    // transformers: rescale multiplies in f64 and stores f32; normalise works in f32.
    let mean = cfg.image_mean.map(|m| m as f32);
    let std = cfg.image_std.map(|s| s as f32);
    let (w, h) = input.dimensions();
    let plane = w as usize * h as usize;
    let mut pixels = vec![0f32; 3 * plane];
    for (i, p) in input.pixels().enumerate() {
        for c in 0..3 {
            let mut v = if cfg.do_rescale { (p[c] as f64 * cfg.rescale_factor) as f32 } else { p[c] as f32 };
            if cfg.do_normalize {
                v = (v - mean[c]) / std[c];
            }
            pixels[c * plane + i] = v;
        }
    }
    Preprocessed { pixels, height: h, width: w, geometry }
}

pub const VICUNA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// Where the image goes in a user's prompt when it names a place for it.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// LLaVA's vicuna_v1 conversation: `{system} USER: <image>\n{question} ASSISTANT: {answer}</s>USER: …
/// ASSISTANT:`. A system message replaces the default system prompt. An image part becomes `<image>\n`
/// where it stands, unless the message's text already names the image's place with `<image>`.
pub fn vicuna_v1(conversation: &Conversation) -> String {
    let system: Vec<String> = conversation.messages.iter().filter(|m| m.role == Role::System).map(text_of).collect();
    let mut out = if system.is_empty() { VICUNA_SYSTEM.to_owned() } else { system.join("\n") };
    for m in conversation.messages.iter().filter(|m| m.role != Role::System) {
        match m.role {
            Role::User => out.push_str(&format!(" USER: {} ASSISTANT:", user_turn(m))),
            Role::Assistant => out.push_str(&format!(" {}</s>", text_of(m).trim())),
            Role::System => unreachable!("filtered above"),
        }
    }
    out
}

/// A user message's text with `<image>\n` where an image part stands, unless the text already names the
/// image's place with `<image>`.
pub fn user_turn(m: &Message) -> String {
    let named = text_of(m).contains(IMAGE_PLACEHOLDER);
    let mut turn = String::new();
    let mut after_text = false;
    for p in &m.parts {
        match p {
            Part::Text(t) => {
                if after_text {
                    turn.push('\n');
                }
                turn.push_str(t.trim());
                after_text = true;
            }
            Part::Image if named => {}
            Part::Image => {
                turn.push_str(IMAGE_PLACEHOLDER);
                turn.push('\n');
                after_text = false;
            }
        }
    }
    turn.trim().to_owned()
}

pub fn text_of(m: &Message) -> String {
    let texts: Vec<&str> =
        m.parts.iter().filter_map(|p| if let Part::Text(t) = p { Some(t.trim()) } else { None }).collect();
    texts.join("\n")
}
