//! Qwen2.5-VL's image processor, transformers' `Qwen2VLImageProcessor` with the PIL backend (spec §4):
//! smart resize to a multiple of patch·merge within a pixel budget, Pillow-exact bicubic resize, rescale and
//! normalise, then the patch rows the vision tower's Conv3d reads.

use crate::preprocess::{resize, Resample};
use crate::{Error, Result};
use image::RgbImage;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

/// transformers' `max_pixels` when a config gives none (28·28·1280). [`PreprocessConfig::default`] holds
/// the Qwen2.5-VL release's 12845056 instead, which every released `preprocessor_config.json` states.
const TRANSFORMERS_MAX_PIXELS: u64 = 28 * 28 * 1280;

/// The most values [`preprocess`] produces (4 GiB of f32). The release's largest input (max_pixels =
/// 12845056) needs 77M; only a config asking for absurd sizes comes near this.
const MAX_PIXEL_VALUES: u64 = 1 << 30;

/// `preprocessor_config.json` of `Qwen2VLImageProcessor`; absent (or `null`) keys take transformers'
/// defaults, unknown keys are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
}

/// The Qwen2.5-VL release's values.
impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 12_845_056,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.48145466, 0.4578275, 0.40821073],
            image_std: [0.26862954, 0.26130258, 0.27577711],
        }
    }
}

/// `size` as newer transformers save it: the pixel budget under other names.
#[derive(Deserialize)]
struct PixelBudget {
    shortest_edge: u64,
    longest_edge: u64,
}

impl PreprocessConfig {
    /// Reads and validates a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let map: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("malformed preprocessor config: {e}")))?;
        let cfg = Self::from_map(&map).map_err(|msg| Error::config(path, msg))?;
        cfg.validate().map_err(|e| Error::config(path, e.to_string()))?;
        Ok(cfg)
    }

    /// Overrides `max_pixels` (the CLI's `--max-pixels`); a value below `min_pixels` is refused, since
    /// smart resize would then follow neither.
    pub fn with_max_pixels(self, max_pixels: u64) -> Result<Self> {
        if max_pixels < self.min_pixels.max(1) {
            return Err(Error::invalid(
                "max_pixels",
                format!("is {max_pixels}, below min_pixels = {} (and must be at least 1)", self.min_pixels),
            ));
        }
        Ok(Self { max_pixels, ..self })
    }

    /// Builds the config key by key so that every error names its field.
    fn from_map(map: &Map<String, Value>) -> std::result::Result<Self, String> {
        let mut cfg = Self { max_pixels: TRANSFORMERS_MAX_PIXELS, ..Self::default() };
        let mut size: Option<PixelBudget> = None;
        get(map, "size", &mut size)?;
        if let Some(s) = size {
            (cfg.min_pixels, cfg.max_pixels) = (s.shortest_edge, s.longest_edge);
        }
        // As in transformers, explicit `min_pixels` / `max_pixels` win over `size`.
        get(map, "min_pixels", &mut cfg.min_pixels)?;
        get(map, "max_pixels", &mut cfg.max_pixels)?;
        get(map, "patch_size", &mut cfg.patch_size)?;
        get(map, "temporal_patch_size", &mut cfg.temporal_patch_size)?;
        get(map, "merge_size", &mut cfg.merge_size)?;
        get(map, "image_mean", &mut cfg.image_mean)?;
        get(map, "image_std", &mut cfg.image_std)?;

        // One pipeline is implemented; a config asking for another must not be silently ignored.
        for key in ["do_resize", "do_rescale", "do_normalize"] {
            let mut on = true;
            get(map, key, &mut on)?;
            if !on {
                return Err(format!("field `{key}`: only true is supported"));
            }
        }
        let mut resample = 3u64;
        get(map, "resample", &mut resample)?;
        if resample != 3 {
            return Err(format!("field `resample`: only 3 (PIL bicubic) is supported, got {resample}"));
        }
        let mut rescale: f64 = 1.0 / 255.0;
        get(map, "rescale_factor", &mut rescale)?;
        // A tolerance, not equality: a JSON parser may land one ulp off Python's 1/255.
        if (rescale * 255.0 - 1.0).abs() > 1e-12 {
            return Err(format!("field `rescale_factor`: only 1/255 is supported, got {rescale}"));
        }
        Ok(cfg)
    }

    /// Checks what [`preprocess`] relies on; errors name the field.
    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("patch_size", self.patch_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("merge_size", self.merge_size),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        self.factor()?;
        if self.max_pixels < self.min_pixels.max(1) {
            return Err(Error::invalid(
                "max_pixels",
                format!("is {}, below min_pixels = {} (and must be at least 1)", self.max_pixels, self.min_pixels),
            ));
        }
        if !self.image_mean.iter().all(|m| m.is_finite()) {
            return Err(Error::invalid("image_mean", format!("must be finite, got {:?}", self.image_mean)));
        }
        if self.image_std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(Error::invalid("image_std", format!("must be finite and non-zero, got {:?}", self.image_std)));
        }
        Ok(())
    }

    /// Smart resize's factor, patch·merge (28).
    fn factor(&self) -> Result<u32> {
        self.patch_size
            .checked_mul(self.merge_size)
            .ok_or_else(|| Error::invalid("merge_size", format!("times patch_size {} overflows", self.patch_size)))
    }
}

/// Overwrites `slot` with `map[key]` when present and not `null`.
fn get<T: DeserializeOwned>(map: &Map<String, Value>, key: &str, slot: &mut T) -> std::result::Result<(), String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => {
            *slot = T::deserialize(v).map_err(|e| format!("field `{key}`: {e}"))?;
            Ok(())
        }
    }
}

/// (height, width) after transformers' `smart_resize`: both multiples of `factor`, the area brought
/// between `min_pixels` and `max_pixels` keeping the aspect ratio. Rounding is Python's (`round` ties to
/// even: 406/28 = 14.5 → 14), all in f64 — the same bits as Python while h·w and the limits are below
/// 2^53, which any image that can be held is.
pub fn smart_resize(height: u32, width: u32, factor: u32, min_pixels: u64, max_pixels: u64) -> Result<(u32, u32)> {
    if height == 0 || width == 0 {
        return Err(Error::invalid("image", format!("has no pixels ({width}×{height})")));
    }
    if factor == 0 {
        return Err(Error::invalid("factor", "must be at least 1"));
    }
    // Python would divide by zero below.
    if max_pixels == 0 {
        return Err(Error::invalid("max_pixels", "must be at least 1"));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(Error::invalid(
            "image",
            format!("is {width}×{height}: its aspect ratio {ratio:.1} is above the 200 Qwen2.5-VL accepts"),
        ));
    }
    let mut multiples = [(h / f).round_ties_even(), (w / f).round_ties_even()];
    // The area compared exactly, as Python's integers do.
    let area = multiples[0] as u128 * multiples[1] as u128 * factor as u128 * factor as u128;
    let pixels = height as u64 * width as u64;
    if area > max_pixels as u128 {
        let beta = (pixels as f64 / max_pixels as f64).sqrt();
        multiples = [(h / beta / f).floor().max(1.0), (w / beta / f).floor().max(1.0)];
    } else if area < min_pixels as u128 {
        let beta = (min_pixels as f64 / pixels as f64).sqrt();
        multiples = [(h * beta / f).ceil(), (w * beta / f).ceil()];
    }
    // `as u64` saturates, so an absurd side fails the checked product instead of wrapping.
    let side = |m: f64| (m as u64).checked_mul(factor as u64).and_then(|s| u32::try_from(s).ok()).filter(|&s| s > 0);
    match (side(multiples[0]), side(multiples[1])) {
        (Some(rh), Some(rw)) => Ok((rh, rw)),
        _ => Err(Error::invalid(
            "image",
            format!(
                "of {width}×{height} resizes to {}×{} pixels with min_pixels = {min_pixels}, max_pixels = \
                 {max_pixels}: a side is zero or beyond 2^32",
                multiples[1] * f,
                multiples[0] * f
            ),
        )),
    }
}

/// The processor's output for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// (grid_t·grid_h·grid_w) rows × (3·temporal·patch·patch) values, row-major.
    pub pixels: Vec<f32>,
    /// `image_grid_thw`: [1, resized height / patch, resized width / patch].
    pub grid_thw: [usize; 3],
    /// (height, width) after smart resize.
    pub resized_hw: (u32, u32),
}

/// Resizes (PIL bicubic), rescales, normalises and patchifies in the row order of spec §4.5: merge blocks
/// in raster order, their merge×merge patches in raster order inside; within a row channel, temporal copy,
/// py, px. A still image fills every temporal frame with the same values.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Processed> {
    cfg.validate()?;
    let (rh, rw) = smart_resize(img.height(), img.width(), cfg.factor()?, cfg.min_pixels, cfg.max_pixels)?;
    let (patch, merge, temporal) = (cfg.patch_size as usize, cfg.merge_size as usize, cfg.temporal_patch_size as usize);
    let values =
        (rh as u64 * rw as u64).checked_mul(3 * cfg.temporal_patch_size as u64).filter(|&n| n <= MAX_PIXEL_VALUES);
    let Some(values) = values else {
        return Err(Error::invalid(
            "image",
            format!(
                "of {}×{} resizes to {rw}×{rh}, beyond the {MAX_PIXEL_VALUES} pixel values this processor \
                 produces; lower max_pixels / min_pixels",
                img.width(),
                img.height()
            ),
        ));
    };
    let resized = resize(img, rw, rh, Resample::Bicubic);

    // A value depends only on its byte and channel. transformers: rescale multiplies in f64 and stores f32;
    // normalise works in f32.
    let normalised: [[f32; 256]; 3] = std::array::from_fn(|c| {
        let (mean, std) = (cfg.image_mean[c] as f32, cfg.image_std[c] as f32);
        std::array::from_fn(|u| ((u as f64 * (1.0 / 255.0)) as f32 - mean) / std)
    });

    let (grid_h, grid_w) = (rh as usize / patch, rw as usize / patch);
    let mut pixels = Vec::with_capacity(values as usize);
    for by in 0..grid_h / merge {
        for bx in 0..grid_w / merge {
            for dy in 0..merge {
                for dx in 0..merge {
                    let (y0, x0) = ((by * merge + dy) * patch, (bx * merge + dx) * patch);
                    for (c, table) in normalised.iter().enumerate() {
                        for _ in 0..temporal {
                            for y in y0..y0 + patch {
                                for x in x0..x0 + patch {
                                    pixels.push(table[resized.get_pixel(x as u32, y as u32)[c] as usize]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Processed { pixels, grid_thw: [1, grid_h, grid_w], resized_hw: (rh, rw) })
}
