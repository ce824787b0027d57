//! LLaVA-1.5 image preprocessing.
//!
//! Reproduces what the reference pipeline does to an image before the vision tower:
//! `Image.open(..).convert("RGB")`, LLaVA's `expand2square` padding with the mean colour, then
//! transformers' `CLIPImageProcessor` (PIL backend): resize (Pillow's `Resample.c`, bit-exact),
//! centre crop, rescale and normalise, producing a CHW `f32` tensor.
//!
//! [`Geometry`] keeps what is needed to map boxes and patches on the model's square input back
//! to the original image.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Rgb, RgbImage};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Everything that can go wrong while loading an image or a preprocessor config.
///
/// Each variant names its source (a path, or whatever the caller passed as `what`).
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read image file {path}: {source}")]
    ReadImage {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image {what} is empty (0 bytes); expected PNG, JPEG, WebP, BMP, GIF or TIFF data")]
    EmptyImage { what: String },
    #[error("image {what} is in an unrecognised format; expected PNG, JPEG, WebP, BMP, GIF or TIFF data")]
    UnknownFormat { what: String },
    #[error("cannot decode image {what} (corrupt, truncated or unsupported data): {source}")]
    Decode {
        what: String,
        #[source]
        source: image::ImageError,
    },
    #[error("image {what} is {width}x{height}; expected at least one pixel")]
    ZeroSize {
        what: String,
        width: u32,
        height: u32,
    },
    #[error("cannot read preprocessor config {path}: {source}")]
    ReadConfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid preprocessor config {path}: {message}")]
    Config { path: String, message: String },
}

/// Loads an image file of any supported format and colour type as 8-bit RGB.
pub fn load_image(path: &Path) -> Result<RgbImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::ReadImage {
        path: path.display().to_string(),
        source,
    })?;
    decode_image(&bytes, &path.display().to_string())
}

/// Decodes an in-memory image (e.g. a Parquet cell) as 8-bit RGB; `what` names it in errors.
///
/// The format is sniffed from the content. EXIF orientation is applied, as transformers'
/// `load_image` does (`ImageOps.exif_transpose`). Alpha is dropped without compositing, like
/// PIL's `convert("RGB")`. 16-bit samples keep their high byte, which is what PIL does for
/// 16-bit colour PNGs (for 16-bit grey PIL clips to 255 instead; we keep the high byte there
/// too rather than whitening the image).
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::EmptyImage {
            what: what.to_owned(),
        });
    }
    let decode_err = |source| PreprocessError::Decode {
        what: what.to_owned(),
        source,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(image::ImageError::IoError(e)))?;
    if reader.format().is_none() {
        return Err(PreprocessError::UnknownFormat {
            what: what.to_owned(),
        });
    }
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    // Broken EXIF is not worth rejecting an otherwise decodable image for.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::ZeroSize {
            what: what.to_owned(),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(match img {
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => {
            // `to_rgb8` would round v/257; PIL truncates to the high byte.
            let rgb16 = img.to_rgb16();
            RgbImage::from_fn(img.width(), img.height(), |x, y| {
                Rgb(rgb16.get_pixel(x, y).0.map(|v| (v >> 8) as u8))
            })
        }
        other => other.to_rgb8(),
    })
}

/// Pillow's resampling filters that LLaVA-style configs use (`resample` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `PIL.Image.BILINEAR` (2).
    Bilinear,
    /// `PIL.Image.BICUBIC` (3), CLIP's default.
    Bicubic,
}

impl Resample {
    fn from_pil(code: u64) -> Result<Self, String> {
        match code {
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            other => Err(format!(
                "field `resample`: unsupported PIL filter {other}; expected 2 (bilinear) or 3 (bicubic)"
            )),
        }
    }

    /// Filter half-width in input pixels at scale 1 (Pillow's `filter->support`).
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    /// Pillow's `bilinear_filter` / `bicubic_filter` (Keys, a = -0.5), same operation order.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

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
            crop_size: CropSize {
                height: 224,
                width: 224,
            },
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
        let text = std::fs::read_to_string(path).map_err(|source| PreprocessError::ReadConfig {
            path: shown.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| PreprocessError::Config {
            path: shown,
            message: e.to_string(),
        })
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
                RawSize::Map {
                    shortest_edge: Some(n),
                    height: None,
                    width: None,
                } => Size::ShortestEdge(n),
                RawSize::Map {
                    shortest_edge: None,
                    height: Some(height),
                    width: Some(width),
                } => Size::Exact { height, width },
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
                RawSize::Int(n) => CropSize {
                    height: n,
                    width: n,
                },
                RawSize::Map {
                    shortest_edge: None,
                    height: Some(height),
                    width: Some(width),
                } => CropSize { height, width },
                RawSize::Map { .. } => {
                    return Err("field `crop_size`: expected {\"height\": h, \"width\": w}".into())
                }
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
            return Err(format!(
                "field `image_std`: expected finite non-zero values, got {:?}",
                self.image_std
            ));
        }
        if !self.image_mean.iter().all(|m| m.is_finite()) {
            return Err(format!(
                "field `image_mean`: expected finite values, got {:?}",
                self.image_mean
            ));
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
    Map {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

/// Overwrites `slot` with `map[key]` when present and not `null`.
fn get<T: DeserializeOwned>(
    map: &Map<String, Value>,
    key: &str,
    slot: &mut T,
) -> Result<(), String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => {
            *slot = T::deserialize(v).map_err(|e| format!("field `{key}`: {e}"))?;
            Ok(())
        }
    }
}

/// Where the original image sits inside the padded square, and which part of that square the
/// model input shows. All coordinates are `[x0, y0, x1, y1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Original image width in pixels.
    pub width: u32,
    /// Original image height in pixels.
    pub height: u32,
    /// Side of the padded square in original pixels.
    pub side: u32,
    /// Column of the square where the original's left edge was pasted.
    pub pad_x: u32,
    /// Row of the square where the original's top edge was pasted.
    pub pad_y: u32,
    /// Region of the padded square (its pixels) covered by the model input; the whole square
    /// unless the centre crop is smaller (or larger) than the resized square.
    pub input_window: [f64; 4],
}

impl Geometry {
    fn w(&self) -> f64 {
        self.width.max(1) as f64
    }

    fn h(&self) -> f64 {
        self.height.max(1) as f64
    }

    /// Box normalised to the padded square → box normalised to the original, clamped to [0, 1].
    pub fn square_to_original(&self, b: [f64; 4]) -> [f64; 4] {
        let s = self.side as f64;
        let (px, py) = (self.pad_x as f64, self.pad_y as f64);
        [
            ((b[0] * s - px) / self.w()).clamp(0.0, 1.0),
            ((b[1] * s - py) / self.h()).clamp(0.0, 1.0),
            ((b[2] * s - px) / self.w()).clamp(0.0, 1.0),
            ((b[3] * s - py) / self.h()).clamp(0.0, 1.0),
        ]
    }

    /// Box normalised to the original → box normalised to the padded square.
    pub fn original_to_square(&self, b: [f64; 4]) -> [f64; 4] {
        let s = self.side.max(1) as f64;
        let (px, py) = (self.pad_x as f64, self.pad_y as f64);
        [
            (b[0] * self.w() + px) / s,
            (b[1] * self.h() + py) / s,
            (b[2] * self.w() + px) / s,
            (b[3] * self.h() + py) / s,
        ]
    }

    /// Box normalised to the original → original pixel coordinates.
    pub fn to_pixels(&self, b: [f64; 4]) -> [f64; 4] {
        let (w, h) = (self.width as f64, self.height as f64);
        [b[0] * w, b[1] * h, b[2] * w, b[3] * h]
    }

    /// Rectangle, in original pixels and clipped to the image, of patch (`row`, `col`) of a
    /// `grid_h`×`grid_w` grid laid over the model input. `None` when the patch is out of range
    /// or shows only padding.
    pub fn patch_rect(&self, row: u32, col: u32, grid_h: u32, grid_w: u32) -> Option<[f64; 4]> {
        if row >= grid_h || col >= grid_w {
            return None;
        }
        let [wx0, wy0, wx1, wy1] = self.input_window;
        let (cw, ch) = ((wx1 - wx0) / grid_w as f64, (wy1 - wy0) / grid_h as f64);
        let (px, py) = (self.pad_x as f64, self.pad_y as f64);
        let (w, h) = (self.width as f64, self.height as f64);
        let x0 = (wx0 + col as f64 * cw - px).clamp(0.0, w);
        let x1 = (wx0 + (col + 1) as f64 * cw - px).clamp(0.0, w);
        let y0 = (wy0 + row as f64 * ch - py).clamp(0.0, h);
        let y1 = (wy0 + (row + 1) as f64 * ch - py).clamp(0.0, h);
        // Tolerance so that a patch edge landing on the image border up to rounding error
        // does not count as overlapping it.
        const EPS: f64 = 1e-9;
        (x1 - x0 > EPS && y1 - y0 > EPS).then_some([x0, y0, x1, y1])
    }
}

/// LLaVA's `expand2square`: pads to a square of `color`, pasting the original at
/// `(0, (w - h) / 2)` for landscape or `((h - w) / 2, 0)` for portrait (integer division).
///
/// The returned geometry's `input_window` is the whole square. A 0×0 input (which
/// [`decode_image`] never returns) yields a 1×1 square of `color`.
pub fn expand_to_square(img: &RgbImage, color: [u8; 3]) -> (RgbImage, Geometry) {
    let (w, h) = img.dimensions();
    let side = w.max(h).max(1);
    let (pad_x, pad_y) = if w >= h {
        (0, (w - h) / 2)
    } else {
        ((h - w) / 2, 0)
    };
    let geometry = Geometry {
        width: w,
        height: h,
        side,
        pad_x,
        pad_y,
        input_window: [0.0, 0.0, side as f64, side as f64],
    };
    if w == h && w > 0 {
        return (img.clone(), geometry);
    }
    let mut out = RgbImage::from_pixel(side, side, Rgb(color));
    for (x, y, p) in img.enumerate_pixels() {
        out.put_pixel(x + pad_x, y + pad_y, *p);
    }
    (out, geometry)
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel filter taps for one axis (Pillow's `precompute_coeffs` followed by
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    /// Taps per output pixel (row stride of `weights`).
    ksize: usize,
    /// First input index and number of taps, per output pixel.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `ksize` per output pixel.
    weights: Vec<i32>,
}

impl Coeffs {
    fn new(in_size: u32, out_size: u32, filter: Resample) -> Self {
        let scale = in_size as f64 / out_size as f64;
        // Antialiasing: when shrinking, widen the filter by the scale.
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0i32; out_size as usize * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size as usize {
            let center = (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like C's (int) cast; Pillow relies on that.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut total = 0.0;
            for (x, kx) in k[..n].iter_mut().enumerate() {
                *kx = filter.weight(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                total += *kx;
            }
            let row = &mut weights[xx * ksize..xx * ksize + n];
            for (w, &kx) in row.iter_mut().zip(&k[..n]) {
                let kx = if total != 0.0 { kx / total } else { kx };
                let scaled = kx * (1u32 << PRECISION_BITS) as f64;
                // Round half away from zero, then truncate, as normalize_coeffs_8bpc does.
                *w = if kx < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            bounds.push((xmin as usize, n));
        }
        Self {
            ksize,
            bounds,
            weights,
        }
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[out];
        (start, &self.weights[out * self.ksize..out * self.ksize + n])
    }
}

/// Pillow's `clip8`: drop the fraction bits and saturate to a byte.
fn clip8(acc: i64) -> u8 {
    if acc >= 1 << (PRECISION_BITS + 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Rounding bias every accumulator starts from.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Resizes to `width`×`height` exactly as Pillow's `Image.resize(size, filter)` does for an RGB
/// image: separable, antialiased, 22-bit fixed point, horizontal pass first, and a pass is
/// skipped when its dimension is unchanged. A zero target size yields an empty image.
///
/// This is Pillow ≤ 12's pass order. Pillow 13 runs the vertical pass first when the height
/// shrinks much more than the width, which can move a few outputs; square-to-square resizes
/// (all that LLaVA's padded pipeline does with `shortest_edge`) are unaffected.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let horiz = Coeffs::new(in_w, width, filter);
    let mut vert = Coeffs::new(in_h, height, filter);

    // Output of the horizontal pass, when there is one.
    let mut tmp = None;
    if width != in_w {
        // Only rows the vertical pass reads are resampled horizontally.
        let first = vert.bounds[0].0;
        let last = vert.bounds.last().map_or(first, |&(s, n)| s + n);
        if height != in_h {
            for b in &mut vert.bounds {
                b.0 -= first;
            }
        }
        let rows = if height != in_h {
            first..last
        } else {
            0..in_h as usize
        };
        let line_len = in_w as usize * 3;
        let src = img.as_raw();
        let mut out = RgbImage::new(width, rows.len() as u32);
        for (y, out_line) in rows.zip(out.chunks_exact_mut(width as usize * 3)) {
            let line = &src[y * line_len..(y + 1) * line_len];
            for (xx, px) in out_line.chunks_exact_mut(3).enumerate() {
                let (start, k) = horiz.taps(xx);
                let mut acc = [HALF; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let p = &line[(start + i) * 3..(start + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * kw as i64;
                    }
                }
                px.copy_from_slice(&acc.map(clip8));
            }
        }
        tmp = Some(out);
    }
    let cur = tmp.as_ref().unwrap_or(img);
    if height != in_h {
        let cw = cur.width() as usize;
        let src = cur.as_raw();
        let mut out = RgbImage::new(cw as u32, height);
        for (yy, out_line) in out.chunks_exact_mut(cw * 3).enumerate() {
            let (start, k) = vert.taps(yy);
            for (x, px) in out_line.chunks_exact_mut(3).enumerate() {
                let mut acc = [HALF; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let o = ((start + i) * cw + x) * 3;
                    for c in 0..3 {
                        acc[c] += src[o + c] as i64 * kw as i64;
                    }
                }
                px.copy_from_slice(&acc.map(clip8));
            }
        }
        return out;
    }
    tmp.unwrap_or_else(|| img.clone())
}

/// transformers' `center_crop` offset: `(size - crop) // 2` (floor division, negative when
/// the crop is larger and the image gets zero-padded).
fn crop_offset(size: u32, crop: u32) -> i64 {
    (size as i64 - crop as i64).div_euclid(2)
}

/// transformers' `center_crop`, including its zero padding when the image is smaller.
fn center_crop(img: &RgbImage, crop: CropSize) -> RgbImage {
    let (w, h) = img.dimensions();
    let (left, top) = (crop_offset(w, crop.width), crop_offset(h, crop.height));
    RgbImage::from_fn(crop.width, crop.height, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if (0..w as i64).contains(&sx) && (0..h as i64).contains(&sy) {
            *img.get_pixel(sx as u32, sy as u32)
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
    let (square, mut geometry) = expand_to_square(img, cfg.pad_color());
    let side = square.width();
    let resized = if cfg.do_resize {
        let (w, h) = cfg.size.output_size(side, side);
        resize(&square, w, h, cfg.resample)
    } else {
        square
    };
    let (rw, rh) = resized.dimensions();
    let input = if cfg.do_center_crop {
        let crop = cfg.crop_size;
        let (sx, sy) = (
            side as f64 / rw.max(1) as f64,
            side as f64 / rh.max(1) as f64,
        );
        let (left, top) = (
            crop_offset(rw, crop.width) as f64,
            crop_offset(rh, crop.height) as f64,
        );
        geometry.input_window = [
            left * sx,
            top * sy,
            (left + crop.width as f64) * sx,
            (top + crop.height as f64) * sy,
        ];
        center_crop(&resized, crop)
    } else {
        resized
    };

    // transformers: rescale multiplies in f64 and stores f32; normalise works in f32.
    let mean = cfg.image_mean.map(|m| m as f32);
    let std = cfg.image_std.map(|s| s as f32);
    let (w, h) = input.dimensions();
    let plane = w as usize * h as usize;
    let mut pixels = vec![0f32; 3 * plane];
    for (i, p) in input.pixels().enumerate() {
        for c in 0..3 {
            let mut v = if cfg.do_rescale {
                (p[c] as f64 * cfg.rescale_factor) as f32
            } else {
                p[c] as f32
            };
            if cfg.do_normalize {
                v = (v - mean[c]) / std[c];
            }
            pixels[c * plane + i] = v;
        }
    }
    Preprocessed {
        pixels,
        height: h,
        width: w,
        geometry,
    }
}
