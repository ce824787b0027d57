//! Image handling every family shares: decoding any supported file as Pillow's
//! `Image.open(..).convert("RGB")` does, Pillow-exact resampling (`Resample.c`), LLaVA-style square
//! padding, and the [`Geometry`] that maps boxes and patches on a model's input back to the original
//! image. Each family's processor (e.g. `models::llava::processor`) builds its pipeline from these.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Rgb, RgbImage};

/// Everything that can go wrong while loading an image or a preprocessor config.
///
/// Each variant names its source (a path, or whatever the caller passed as `what`) and states its cause
/// in its own message (not also as an error source, which would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read image file {path}: {cause}")]
    ReadImage { path: String, cause: std::io::Error },
    #[error("image {what} is empty (0 bytes); expected PNG, JPEG, WebP, BMP, GIF or TIFF data")]
    EmptyImage { what: String },
    #[error("image {what} is in an unrecognised format; expected PNG, JPEG, WebP, BMP, GIF or TIFF data")]
    UnknownFormat { what: String },
    #[error("cannot decode image {what} (corrupt, truncated or unsupported data): {cause}")]
    Decode { what: String, cause: image::ImageError },
    #[error(
        "image {what} is {width}x{height} = {} pixels, above the limit of {max_pixels} (a decompression bomb, \
         or raise the pixel limit)",
        *width as u64 * *height as u64
    )]
    TooLarge { what: String, width: u32, height: u32, max_pixels: u64 },
    #[error("image {what} is truncated: the JPEG data has no end-of-image marker")]
    Truncated { what: String },
    #[error("image {path} is not a regular file (a directory, FIFO or device cannot be read as an image)")]
    NotAFile { path: String },
    #[error("image file {path} is {size} bytes, above the {max} bytes an image may have")]
    FileTooLarge { path: String, size: u64, max: u64 },
    #[error("image {what} is {width}x{height}; expected at least one pixel")]
    ZeroSize { what: String, width: u32, height: u32 },
    #[error("cannot read preprocessor config {path}: {cause}")]
    ReadConfig { path: String, cause: std::io::Error },
    #[error("invalid preprocessor config {path}: {message}")]
    Config { path: String, message: String },
}

/// Loads an image file of any supported format and colour type as 8-bit RGB.
pub fn load_image(path: &Path) -> Result<RgbImage, PreprocessError> {
    decode_image(&read_image_file(path)?, &path.display().to_string())
}

/// The bytes of an image file, read with the limits every image file gets.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>, PreprocessError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let read_err = |cause| PreprocessError::ReadImage { path: shown.clone(), cause };
    // Only regular files: a FIFO would block forever, a device read without end.
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(PreprocessError::NotAFile { path: shown });
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(PreprocessError::FileTooLarge { path: shown, size: meta.len(), max: MAX_IMAGE_FILE_BYTES });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path).and_then(|f| f.take(MAX_IMAGE_FILE_BYTES).read_to_end(&mut bytes)).map_err(read_err)?;
    Ok(bytes)
}

/// The largest image file read (a file growing while it is read stops here too).
pub const MAX_IMAGE_FILE_BYTES: u64 = 1 << 30;

/// Decodes an in-memory image (e.g. a Parquet cell) as 8-bit RGB; `what` names it in errors.
///
/// The format is sniffed from the content. EXIF orientation is applied, as transformers'
/// `load_image` does (`ImageOps.exif_transpose`). Alpha is dropped without compositing, like
/// PIL's `convert("RGB")`. 16-bit samples keep their high byte, which is what PIL does for
/// 16-bit colour PNGs (for 16-bit grey PIL clips to 255 instead; we keep the high byte there
/// too rather than whitening the image).
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage, PreprocessError> {
    decode_image_within(bytes, what, DEFAULT_MAX_PIXELS)
}

/// Pillow's decompression-bomb limit (twice `Image.MAX_IMAGE_PIXELS`), the default for every image.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// [`decode_image`] refusing images whose header claims more than `max_pixels` pixels, before any pixel
/// is decoded (a few-KB file can claim gigapixels).
pub fn decode_image_within(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::EmptyImage { what: what.to_owned() });
    }
    let decode_err = |cause| PreprocessError::Decode { what: what.to_owned(), cause };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(image::ImageError::IoError(e)))?;
    match reader.format() {
        None => return Err(PreprocessError::UnknownFormat { what: what.to_owned() }),
        // The JPEG decoder fills a cut-off image with grey instead of failing: require its end marker
        // (some writers pad after it).
        Some(image::ImageFormat::Jpeg) => {
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if !bytes[..end].ends_with(&[0xFF, 0xD9]) {
                return Err(PreprocessError::Truncated { what: what.to_owned() });
            }
        }
        Some(_) => {}
    }
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > max_pixels {
        return Err(PreprocessError::TooLarge { what: what.to_owned(), width: w, height: h, max_pixels });
    }
    // The widest decoded form (16-bit RGBA) of an image within the limit, plus room for the decoder's own
    // buffers: an allocation beyond that means the header lied.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 26));
    decoder.set_limits(limits).map_err(decode_err)?;
    // Broken EXIF is not worth rejecting an otherwise decodable image for.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::ZeroSize { what: what.to_owned(), width: img.width(), height: img.height() });
    }
    Ok(match img {
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => {
            // `to_rgb8` would round v/257; PIL truncates to the high byte.
            let rgb16 = img.to_rgb16();
            RgbImage::from_fn(img.width(), img.height(), |x, y| Rgb(rgb16.get_pixel(x, y).0.map(|v| (v >> 8) as u8)))
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
    pub fn from_pil(code: u64) -> Result<Self, String> {
        match code {
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            other => {
                Err(format!("field `resample`: unsupported PIL filter {other}; expected 2 (bilinear) or 3 (bicubic)"))
            }
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

/// The frame a model answers boxes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Frame {
    /// LLaVA-1.5's padded square.
    #[default]
    PaddedSquare,
    /// The original image itself (LLaVA-NeXT); the padding fields are zero.
    Original,
    /// The image resized to `width`×`height` without padding, boxes answered in its pixels (Qwen2.5-VL's
    /// smart resize); the padding fields are zero.
    ResizedPixels { width: u32, height: u32 },
}

/// Where the original image sits inside the frame the model answers in (LLaVA-1.5's padded square, or
/// the image itself), and which part of that frame the model input shows. All coordinates are
/// `[x0, y0, x1, y1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub frame: Frame,
    /// Original image width in pixels.
    pub width: u32,
    /// Original image height in pixels.
    pub height: u32,
    /// Side of the padded square in original pixels (the longer side when the frame is the original).
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

    /// The frame's (width, height) in original pixels.
    fn frame_size(&self) -> (f64, f64) {
        match self.frame {
            Frame::PaddedSquare => (self.side.max(1) as f64, self.side.max(1) as f64),
            Frame::Original | Frame::ResizedPixels { .. } => (self.w(), self.h()),
        }
    }

    /// A box as the model answers it → normalised to its frame: pixels of a resized frame divided by its
    /// size, other frames' boxes as they are (already normalised). Unclamped, as the harnesses score it.
    pub fn answer_normalized(&self, b: [f64; 4]) -> [f64; 4] {
        match self.frame {
            Frame::ResizedPixels { width, height } => {
                let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
                [b[0] / w, b[1] / h, b[2] / w, b[3] / h]
            }
            Frame::PaddedSquare | Frame::Original => b,
        }
    }

    /// A box as the model answers it → normalised to the original image, clamped to [0, 1].
    pub fn answer_to_original(&self, b: [f64; 4]) -> [f64; 4] {
        self.square_to_original(self.answer_normalized(b))
    }

    /// Box normalised to the model's frame (the padded square) → box normalised to the original,
    /// clamped to [0, 1].
    pub fn square_to_original(&self, b: [f64; 4]) -> [f64; 4] {
        let (sx, sy) = self.frame_size();
        let (px, py) = (self.pad_x as f64, self.pad_y as f64);
        [
            ((b[0] * sx - px) / self.w()).clamp(0.0, 1.0),
            ((b[1] * sy - py) / self.h()).clamp(0.0, 1.0),
            ((b[2] * sx - px) / self.w()).clamp(0.0, 1.0),
            ((b[3] * sy - py) / self.h()).clamp(0.0, 1.0),
        ]
    }

    /// Box normalised to the original → box normalised to the model's frame.
    pub fn original_to_square(&self, b: [f64; 4]) -> [f64; 4] {
        let (sx, sy) = self.frame_size();
        let (px, py) = (self.pad_x as f64, self.pad_y as f64);
        [
            (b[0] * self.w() + px) / sx,
            (b[1] * self.h() + py) / sy,
            (b[2] * self.w() + px) / sx,
            (b[3] * self.h() + py) / sy,
        ]
    }

    /// The image as its own frame, the whole of it shown (LLaVA-NeXT's base view).
    pub fn original_frame(width: u32, height: u32) -> Self {
        let input_window = [0.0, 0.0, width as f64, height as f64];
        Self { frame: Frame::Original, width, height, side: width.max(height), pad_x: 0, pad_y: 0, input_window }
    }

    /// Box normalised to the original → original pixel coordinates.
    pub fn to_pixels(&self, b: [f64; 4]) -> [f64; 4] {
        let (w, h) = (self.width as f64, self.height as f64);
        [b[0] * w, b[1] * h, b[2] * w, b[3] * h]
    }

    /// Where the model input lies on the original image, `[x0, y0, x1, y1]` in its pixels: past the
    /// image's edges where the input shows padding.
    pub fn input_rect(&self) -> [f64; 4] {
        let [wx0, wy0, wx1, wy1] = self.input_window;
        let (px, py) = (self.pad_x as f64, self.pad_y as f64);
        [wx0 - px, wy0 - py, wx1 - px, wy1 - py]
    }

    /// Rectangle, in original pixels and clipped to the image, of patch (`row`, `col`) of a
    /// `grid_h`×`grid_w` grid laid over the model input. `None` when the patch is out of range
    /// or shows only padding.
    pub fn patch_rect(&self, row: u32, col: u32, grid_h: u32, grid_w: u32) -> Option<[f64; 4]> {
        cell_rect(self.input_rect(), (row, col), (grid_h, grid_w), (self.width, self.height))
    }
}

/// Rectangle, clipped to a `size` (width, height) image, of cell (`row`, `col`) of a `grid` (rows, cols)
/// spread evenly over `window` (`[x0, y0, x1, y1]` in the image's pixels). `None` when the cell is out
/// of range or lies wholly outside the image.
pub fn cell_rect(window: [f64; 4], (row, col): (u32, u32), grid: (u32, u32), size: (u32, u32)) -> Option<[f64; 4]> {
    if row >= grid.0 || col >= grid.1 {
        return None;
    }
    let [wx0, wy0, wx1, wy1] = window;
    let (cw, ch) = ((wx1 - wx0) / grid.1 as f64, (wy1 - wy0) / grid.0 as f64);
    let (w, h) = (size.0 as f64, size.1 as f64);
    let x0 = (wx0 + col as f64 * cw).clamp(0.0, w);
    let x1 = (wx0 + (col + 1) as f64 * cw).clamp(0.0, w);
    let y0 = (wy0 + row as f64 * ch).clamp(0.0, h);
    let y1 = (wy0 + (row + 1) as f64 * ch).clamp(0.0, h);
    // Tolerance so that a patch edge landing on the image border up to rounding error
    // does not count as overlapping it.
    const EPS: f64 = 1e-9;
    (x1 - x0 > EPS && y1 - y0 > EPS).then_some([x0, y0, x1, y1])
}

impl Geometry {
    /// The geometry of [`expand_to_square`]'s square for a `width`×`height` image.
    pub fn padded_square(width: u32, height: u32) -> Self {
        let side = width.max(height).max(1);
        let (pad_x, pad_y) = if width >= height { (0, (width - height) / 2) } else { ((height - width) / 2, 0) };
        let input_window = [0.0, 0.0, side as f64, side as f64];
        Self { frame: Frame::PaddedSquare, width, height, side, pad_x, pad_y, input_window }
    }
}

/// LLaVA's `expand2square`: pads to a square of `color`, pasting the original at
/// `(0, (w - h) / 2)` for landscape or `((h - w) / 2, 0)` for portrait (integer division).
///
/// The returned geometry's `input_window` is the whole square. A 0×0 input (which
/// [`decode_image`] never returns) yields a 1×1 square of `color`.
pub fn expand_to_square(img: &RgbImage, color: [u8; 3]) -> (RgbImage, Geometry) {
    let (w, h) = img.dimensions();
    let geometry = Geometry::padded_square(w, h);
    if w == h && w > 0 {
        return (img.clone(), geometry);
    }
    let mut out = RgbImage::from_pixel(geometry.side, geometry.side, Rgb(color));
    for (x, y, p) in img.enumerate_pixels() {
        out.put_pixel(x + geometry.pad_x, y + geometry.pad_y, *p);
    }
    (out, geometry)
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel filter taps for one axis of a canvas on which the image covers `span` (Pillow's
/// `precompute_coeffs` followed by `normalize_coeffs_8bpc`). Taps outside the image all read the pad
/// colour, so only their weights' sum is kept: storage grows with the image, not the canvas.
struct Coeffs {
    /// Per output pixel: the first image index (from the span's start) it reads, and its weights' range in
    /// `weights`.
    taps: Vec<(usize, std::ops::Range<usize>)>,
    weights: Vec<i32>,
    /// Per output pixel: the sum of its weights outside the image, and of all its weights.
    outside: Vec<i64>,
    total: Vec<i64>,
    /// The output pixels with at least one image tap (contiguous, as the windows only move forward).
    touched: std::ops::Range<usize>,
}

impl Coeffs {
    fn new(in_size: u32, out_size: u32, filter: Resample, span: std::ops::Range<usize>) -> Self {
        let scale = in_size as f64 / out_size as f64;
        // Antialiasing: when shrinking, widen the filter by the scale.
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut c = Coeffs {
            taps: Vec::with_capacity(out_size as usize),
            weights: Vec::new(),
            outside: Vec::with_capacity(out_size as usize),
            total: Vec::with_capacity(out_size as usize),
            touched: 0..0,
        };
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size as usize {
            let center = (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like C's (int) cast; Pillow relies on that.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let xmin = xmin as usize;
            let mut total = 0.0;
            for (x, kx) in k[..n].iter_mut().enumerate() {
                *kx = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
                total += *kx;
            }
            let first = c.weights.len();
            let (mut outside, mut sum) = (0i64, 0i64);
            for (x, &kx) in k[..n].iter().enumerate() {
                let kx = if total != 0.0 { kx / total } else { kx };
                let scaled = kx * (1u32 << PRECISION_BITS) as f64;
                // Round half away from zero, then truncate, as normalize_coeffs_8bpc does.
                let w = if kx < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
                sum += w as i64;
                if span.contains(&(x + xmin)) {
                    c.weights.push(w);
                } else {
                    outside += w as i64;
                }
            }
            if c.weights.len() > first {
                c.touched = if c.touched.is_empty() { xx..xx + 1 } else { c.touched.start..xx + 1 };
            }
            c.taps.push((xmin.max(span.start).saturating_sub(span.start), first..c.weights.len()));
            c.outside.push(outside);
            c.total.push(sum);
        }
        c
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (start, ref range) = self.taps[out];
        (start, &self.weights[range.clone()])
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

/// `weight` times `color` plus the rounding bias, per channel: what a pixel's taps on padding add up to.
fn pad_acc(color: [u8; 3], weight: i64) -> [i64; 3] {
    color.map(|c| HALF + c as i64 * weight)
}

/// An image pasted at `at` on a `size` canvas of `color`, which is never built.
struct Canvas<'a> {
    img: &'a RgbImage,
    size: (u32, u32),
    at: (u32, u32),
    color: [u8; 3],
}

/// The canvas after the horizontal pass: every row is `outside`, except that rows `first_row..` (the
/// image's) hold `rows` in columns `cols`.
struct Band<'a> {
    outside: Vec<[u8; 3]>,
    cols: std::ops::Range<usize>,
    first_row: usize,
    rows: std::borrow::Cow<'a, RgbImage>,
}

/// Resizes to `width`×`height` exactly as Pillow's `Image.resize(size, filter)` does for an RGB
/// image: separable, antialiased, 22-bit fixed point, horizontal pass first, and a pass is
/// skipped when its dimension is unchanged. A zero target size yields an empty image.
///
/// This is Pillow ≤ 12's pass order. Pillow 13 runs the vertical pass first when the height
/// shrinks much more than the width, which can move a few outputs; square-to-square resizes
/// (all that LLaVA's padded pipeline does with `shortest_edge`) are unaffected.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    resample(&Canvas { img, size: img.dimensions(), at: (0, 0), color: [0; 3] }, width, height, filter)
}

/// `resize(&expand_to_square(img, color).0, width, height, filter)`, bit for bit, without building the
/// square: memory and time grow with the image and the output, not with the square (a 4096×1 strip
/// would pad to 4096×4096).
pub fn resize_padded(img: &RgbImage, color: [u8; 3], width: u32, height: u32, filter: Resample) -> RgbImage {
    let g = Geometry::padded_square(img.width(), img.height());
    resample(&Canvas { img, size: (g.side, g.side), at: (g.pad_x, g.pad_y), color }, width, height, filter)
}

fn resample(canvas: &Canvas, width: u32, height: u32, filter: Resample) -> RgbImage {
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let (img, color) = (canvas.img, canvas.color);
    let (x0, y0) = (canvas.at.0 as usize, canvas.at.1 as usize);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let band = if width == canvas.size.0 {
        Band {
            outside: vec![color; width as usize],
            cols: x0..x0 + w,
            first_row: y0,
            rows: std::borrow::Cow::Borrowed(img),
        }
    } else {
        let horiz = Coeffs::new(canvas.size.0, width, filter, x0..x0 + w);
        let outside = horiz.total.iter().map(|&t| pad_acc(color, t).map(clip8)).collect();
        let cols = horiz.touched.clone();
        let mut rows = RgbImage::new(cols.len() as u32, h as u32);
        if !cols.is_empty() {
            for (line, out_line) in img.as_raw().chunks_exact(w * 3).zip(rows.chunks_exact_mut(cols.len() * 3)) {
                for (xx, px) in cols.clone().zip(out_line.chunks_exact_mut(3)) {
                    let (start, k) = horiz.taps(xx);
                    let mut acc = pad_acc(color, horiz.outside[xx]);
                    for (i, &kw) in k.iter().enumerate() {
                        let p = &line[(start + i) * 3..(start + i) * 3 + 3];
                        for c in 0..3 {
                            acc[c] += p[c] as i64 * kw as i64;
                        }
                    }
                    px.copy_from_slice(&acc.map(clip8));
                }
            }
        }
        Band { outside, cols, first_row: y0, rows: std::borrow::Cow::Owned(rows) }
    };

    let out_w = band.outside.len();
    let stride = band.cols.len() * 3;
    let src = band.rows.as_raw();
    let mut out = RgbImage::new(out_w as u32, height);
    if height == canvas.size.1 {
        for (y, out_line) in out.chunks_exact_mut(out_w * 3).enumerate() {
            for (x, px) in out_line.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&band.outside[x]);
            }
            if let Some(row) = y.checked_sub(band.first_row).filter(|&r| r < h) {
                out_line[band.cols.start * 3..band.cols.end * 3]
                    .copy_from_slice(&src[row * stride..(row + 1) * stride]);
            }
        }
        return out;
    }
    let vert = Coeffs::new(canvas.size.1, height, filter, band.first_row..band.first_row + h);
    for (yy, out_line) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let (start, k) = vert.taps(yy);
        for (x, px) in out_line.chunks_exact_mut(3).enumerate() {
            let mut acc;
            if let Some(bx) = x.checked_sub(band.cols.start).filter(|_| band.cols.contains(&x)) {
                acc = pad_acc(band.outside[x], vert.outside[yy]);
                for (i, &kw) in k.iter().enumerate() {
                    let o = (start + i) * stride + bx * 3;
                    for c in 0..3 {
                        acc[c] += src[o + c] as i64 * kw as i64;
                    }
                }
            } else {
                // Every row of this column is the padding's.
                acc = pad_acc(band.outside[x], vert.total[yy]);
            }
            px.copy_from_slice(&acc.map(clip8));
        }
    }
    out
}
