mod common;
use common::scratch::Scratch;
use std::path::Path;

use image::{ImageBuffer, Luma, LumaA, Rgb, RgbImage, Rgba};
use nuwa::models::llava::processor::{preprocess, CropSize, PreprocessConfig, Size};
use nuwa::preprocess::{decode_image, expand_to_square, load_image, resize, Geometry, Resample};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-llava-1.5");
const CLIP_PAD: [u8; 3] = [122, 116, 104];

/// Config that leaves pixels as raw 0..=255 values, to inspect geometry.
fn raw_config() -> PreprocessConfig {
    PreprocessConfig {
        do_resize: false,
        do_center_crop: false,
        do_rescale: false,
        do_normalize: false,
        ..PreprocessConfig::default()
    }
}

/// Pixel (x, y) of a CHW tensor.
fn chw(pixels: &[f32], width: u32, height: u32, x: u32, y: u32) -> [f32; 3] {
    let plane = (width * height) as usize;
    let i = (y * width + x) as usize;
    [pixels[i], pixels[plane + i], pixels[2 * plane + i]]
}

fn assert_close(a: [f64; 4], b: [f64; 4], tol: f64) {
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tol, "{a:?} != {b:?}");
    }
}

// ---------------------------------------------------------------- golden

#[test]
fn golden_pixel_values_match_transformers() {
    let dir = Path::new(FIXTURES);
    let cfg = PreprocessConfig::from_file(&dir.join("preprocessor_config.json")).unwrap();
    let img = load_image(&dir.join("image.png")).unwrap();
    assert_eq!(img.dimensions(), (500, 375));
    let out = preprocess(&img, &cfg);
    assert_eq!((out.width, out.height), (336, 336));
    assert_eq!(out.pixels.len(), 3 * 336 * 336);

    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let golden = tensors.tensor("pixel_values").unwrap();
    assert_eq!(golden.dtype(), safetensors::Dtype::F32);
    assert_eq!(golden.shape().iter().product::<usize>(), out.pixels.len());
    let expected: Vec<f32> =
        golden.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();

    let diffs: Vec<f64> = out.pixels.iter().zip(&expected).map(|(a, b)| (a - b).abs() as f64).collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    println!("golden pixel_values: mean |Δ| = {mean:e}, max |Δ| = {max:e}");
    assert!(mean <= 0.01, "mean |Δ| {mean} > 0.01");
    // The golden came from the PIL path, which we reproduce bit for bit; a single
    // off-by-one resize output would show up as ~0.015 here.
    assert!(max <= 1e-6, "max |Δ| {max}: no longer PIL-exact");

    let g = out.geometry;
    assert_eq!((g.width, g.height, g.side, g.pad_x, g.pad_y), (500, 375, 500, 0, 62));
    assert_eq!(g.input_window, [0.0, 0.0, 500.0, 500.0]);
}

// ---------------------------------------------------------------- padding and geometry

#[test]
fn landscape_is_pasted_at_vertical_centre() {
    // 5×2: (5 - 2) / 2 = 1 row of padding above (integer division), 2 below.
    let mut img = RgbImage::from_pixel(5, 2, Rgb([1, 2, 3]));
    img.put_pixel(4, 1, Rgb([250, 0, 7]));
    let out = preprocess(&img, &raw_config());
    assert_eq!((out.width, out.height), (5, 5));
    let px = |x, y| chw(&out.pixels, 5, 5, x, y);
    assert_eq!(px(4, 2), [250.0, 0.0, 7.0]);
    assert_eq!(px(0, 1), [1.0, 2.0, 3.0]);
    for (x, y) in [(0, 0), (4, 0), (0, 3), (4, 4)] {
        assert_eq!(px(x, y), CLIP_PAD.map(f32::from), "({x},{y}) should be padding");
    }
    let g = out.geometry;
    assert_eq!((g.side, g.pad_x, g.pad_y), (5, 0, 1));
}

#[test]
fn portrait_is_pasted_at_horizontal_centre() {
    let mut img = RgbImage::from_pixel(3, 7, Rgb([9, 9, 9]));
    img.put_pixel(0, 6, Rgb([11, 22, 33]));
    let (sq, g) = expand_to_square(&img, CLIP_PAD);
    assert_eq!(sq.dimensions(), (7, 7));
    assert_eq!((g.pad_x, g.pad_y), (2, 0));
    assert_eq!(sq.get_pixel(2, 6), &Rgb([11, 22, 33]));
    assert_eq!(sq.get_pixel(4, 0), &Rgb([9, 9, 9]));
    assert_eq!(sq.get_pixel(1, 3), &Rgb(CLIP_PAD));
    assert_eq!(sq.get_pixel(5, 3), &Rgb(CLIP_PAD));
}

#[test]
fn square_is_not_padded() {
    let mut img = RgbImage::from_pixel(4, 4, Rgb([5, 6, 7]));
    img.put_pixel(3, 0, Rgb([200, 100, 0]));
    let (sq, g) = expand_to_square(&img, CLIP_PAD);
    assert_eq!(sq, img);
    assert_eq!((g.side, g.pad_x, g.pad_y), (4, 0, 0));
}

#[test]
fn pad_color_is_truncated_mean() {
    assert_eq!(PreprocessConfig::default().pad_color(), CLIP_PAD);
}

fn geometry(width: u32, height: u32) -> Geometry {
    expand_to_square(&RgbImage::new(width, height), CLIP_PAD).1
}

#[test]
fn box_mapping_round_trips() {
    let boxes = [[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0], [0.33, 0.5, 0.34, 0.51]];
    for (w, h) in [(500, 375), (375, 500), (64, 64), (7, 2)] {
        let g = geometry(w, h);
        for b in boxes {
            let sq = g.original_to_square(b);
            assert_close(g.square_to_original(sq), b, 1e-9);
        }
    }
}

#[test]
fn box_mapping_values() {
    let g = geometry(500, 375); // pad_y = 62
    assert_close(g.original_to_square([0.0, 0.0, 1.0, 1.0]), [0.0, 0.124, 1.0, 0.874], 1e-12);
    // The whole square maps to the whole image; padding is clamped away.
    assert_close(g.square_to_original([0.0, 0.0, 1.0, 1.0]), [0.0, 0.0, 1.0, 1.0], 0.0);
    assert_close(g.square_to_original([0.2, 0.0, 0.4, 0.1]), [0.2, 0.0, 0.4, 0.0], 1e-12);
    assert_close(g.to_pixels([0.1, 0.2, 0.5, 1.0]), [50.0, 75.0, 250.0, 375.0], 1e-9);

    let g = geometry(375, 500); // pad_x = 62
    assert_close(g.square_to_original([0.5, 0.5, 0.874, 1.0]), [188.0 / 375.0, 0.5, 1.0, 1.0], 1e-12);
}

#[test]
fn patch_rects_skip_padding_and_clip() {
    let g = geometry(500, 375); // image rows 62..437 of the 500-pixel square
    let cell = 500.0 / 24.0;
    assert_eq!(g.patch_rect(0, 5, 24, 24), None, "top rows are padding");
    assert_eq!(g.patch_rect(23, 5, 24, 24), None, "bottom rows are padding");
    // Row 2 spans 41.7..62.5 in the square: only half a pixel of it is image.
    assert_close(g.patch_rect(2, 0, 24, 24).unwrap(), [0.0, 0.0, cell, 62.5 - 62.0], 1e-9);
    let r = g.patch_rect(12, 3, 24, 24).unwrap();
    assert_close(r, [3.0 * cell, 12.0 * cell - 62.0, 4.0 * cell, 13.0 * cell - 62.0], 1e-9);
    // Bottom-right patch that still shows image is clipped to the image.
    let r = g.patch_rect(20, 23, 24, 24).unwrap();
    assert_close(r, [23.0 * cell, 20.0 * cell - 62.0, 500.0, 375.0], 1e-9);
    assert_eq!(g.patch_rect(24, 0, 24, 24), None, "out of range");
    assert_eq!(g.patch_rect(0, 0, 0, 0), None, "empty grid");

    // Every image pixel is covered by exactly the patches that are Some.
    let area: f64 = (0..24)
        .flat_map(|r| (0..24).map(move |c| (r, c)))
        .filter_map(|(r, c)| g.patch_rect(r, c, 24, 24))
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .sum();
    assert!((area - 500.0 * 375.0).abs() < 1e-6, "area {area}");
}

#[test]
fn crop_narrows_the_input_window() {
    // CLIP-224 style: resize the square to 256, crop the central 224.
    let cfg = PreprocessConfig {
        size: Size::ShortestEdge(256),
        crop_size: CropSize { height: 224, width: 224 },
        ..PreprocessConfig::default()
    };
    let out = preprocess(&RgbImage::from_pixel(400, 300, Rgb([1, 2, 3])), &cfg);
    assert_eq!((out.width, out.height, out.pixels.len()), (224, 224, 3 * 224 * 224));
    let k = 400.0 / 256.0;
    assert_close(out.geometry.input_window, [16.0 * k, 16.0 * k, 240.0 * k, 240.0 * k], 1e-9);
    // The first patch column now starts 25 original pixels in, not at 0.
    let r = out.geometry.patch_rect(10, 0, 14, 14).unwrap();
    assert!((r[0] - 25.0).abs() < 1e-9, "{r:?}");
}

#[test]
fn crop_larger_than_image_zero_pads() {
    // transformers pads with zeros: offset (2 - 5) // 2 = -2, so the image lands at 2..4.
    let cfg = PreprocessConfig { do_center_crop: true, crop_size: CropSize { height: 5, width: 5 }, ..raw_config() };
    let out = preprocess(&RgbImage::from_pixel(2, 2, Rgb([40, 50, 60])), &cfg);
    assert_eq!((out.width, out.height), (5, 5));
    let px = |x, y| chw(&out.pixels, 5, 5, x, y);
    assert_eq!(px(2, 2), [40.0, 50.0, 60.0]);
    assert_eq!(px(3, 3), [40.0, 50.0, 60.0]);
    assert_eq!(px(1, 2), [0.0; 3]);
    assert_eq!(px(4, 4), [0.0; 3]);
}

#[test]
fn normalisation_follows_transformers() {
    let out = preprocess(&RgbImage::from_pixel(8, 8, Rgb([255, 0, 128])), &PreprocessConfig::default());
    let cfg = PreprocessConfig::default();
    let expect =
        |v: f64, c: usize| ((v * cfg.rescale_factor) as f32 - cfg.image_mean[c] as f32) / cfg.image_std[c] as f32;
    assert_eq!(chw(&out.pixels, 224, 224, 100, 7), [expect(255.0, 0), expect(0.0, 1), expect(128.0, 2)]);
}

#[test]
fn degenerate_images_do_not_panic() {
    let cfg = PreprocessConfig::default();
    for (w, h) in [(0, 0), (0, 5), (1, 1), (1, 300)] {
        let out = preprocess(&RgbImage::new(w, h), &cfg);
        assert_eq!(out.pixels.len(), 3 * 224 * 224);
        assert!(out.pixels.iter().all(|v| v.is_finite()));
    }
}

// ---------------------------------------------------------------- resize

#[test]
fn constant_colour_survives_resize() {
    let img = RgbImage::from_pixel(37, 23, Rgb([13, 200, 77]));
    for filter in [Resample::Bicubic, Resample::Bilinear] {
        for (w, h) in [(100, 80), (5, 3), (37, 7), (90, 23), (1, 1), (336, 336)] {
            let out = resize(&img, w, h, filter);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| *p == Rgb([13, 200, 77])), "{filter:?} {w}x{h}");
        }
    }
}

#[test]
fn same_size_resize_is_identity() {
    let img = RgbImage::from_fn(9, 4, |x, y| Rgb([x as u8 * 20, y as u8 * 50, 7]));
    assert_eq!(resize(&img, 9, 4, Resample::Bicubic), img);
    assert_eq!(resize(&img, 0, 4, Resample::Bicubic).dimensions(), (0, 4));
}

/// First channel of a one-row resize of grey levels.
fn resize_row(levels: &[u8], width: u32, filter: Resample) -> Vec<u8> {
    let img = RgbImage::from_fn(levels.len() as u32, 1, |x, _| Rgb([levels[x as usize]; 3]));
    resize(&img, width, 1, filter).pixels().map(|p| p[0]).collect()
}

#[test]
fn resize_matches_hand_computed_pillow_values() {
    // Upscale 2 -> 4: centres 0.25, 0.75, 1.25, 1.75; edge outputs see one tap only.
    // Bilinear middle: 255 * 0.25 = 63.75 -> 64. Bicubic: weights f(0.25)=0.8671875 and
    // f(0.75)=0.2265625, normalised, give 255 * 0.2071 = 52.8 -> 53.
    assert_eq!(resize_row(&[0, 255], 4, Resample::Bilinear), [0, 64, 191, 255]);
    assert_eq!(resize_row(&[0, 255], 4, Resample::Bicubic), [0, 53, 202, 255]);
    // Downscale 4 -> 2 is antialiased: bilinear support widens to 2, taps 0.75, 0.75, 0.25
    // normalise to 3/7, 3/7, 1/7 -> 255/7 = 36.4 -> 36.
    assert_eq!(resize_row(&[0, 0, 255, 255], 2, Resample::Bilinear), [36, 219]);
    assert_eq!(resize_row(&[0, 0, 255, 255], 2, Resample::Bicubic), [21, 234]);
}

#[test]
fn vertical_pass_is_the_horizontal_pass_transposed() {
    // Single-axis resizes run one pass each; both must use the same kernel.
    let img = RgbImage::from_fn(5, 31, |x, y| Rgb([(y * 8) as u8, (x * 50) as u8, ((x * y * 7) % 256) as u8]));
    let t = RgbImage::from_fn(31, 5, |x, y| *img.get_pixel(y, x));
    for (filter, h) in [(Resample::Bicubic, 12), (Resample::Bicubic, 70), (Resample::Bilinear, 9)] {
        let a = resize(&img, 5, h, filter);
        let b = resize(&t, h, 5, filter);
        assert!(a.enumerate_pixels().all(|(x, y, p)| p == b.get_pixel(y, x)), "{filter:?} {h}");
    }
}

// ---------------------------------------------------------------- config

#[test]
fn fixture_config_parses() {
    let cfg = PreprocessConfig::from_file(&Path::new(FIXTURES).join("preprocessor_config.json")).unwrap();
    assert_eq!(cfg.size, Size::ShortestEdge(336));
    assert_eq!(cfg.crop_size, CropSize { height: 336, width: 336 });
    assert_eq!(cfg.resample, Resample::Bicubic);
    assert_eq!(cfg.image_mean, [0.48145466, 0.4578275, 0.40821073]);
    assert!((cfg.rescale_factor - 1.0 / 255.0).abs() < 1e-15);
}

#[test]
fn config_defaults_and_variants() {
    let parse = |s: &str| serde_json::from_str::<PreprocessConfig>(s);
    assert_eq!(parse("{}").unwrap(), PreprocessConfig::default());
    assert_eq!(parse(r#"{"crop_size": null, "unknown": [1]}"#).unwrap(), PreprocessConfig::default());
    let cfg = parse(
        r#"{"size": {"height": 300, "width": 200}, "crop_size": 100, "resample": 2,
                        "do_normalize": false}"#,
    )
    .unwrap();
    assert_eq!(cfg.size, Size::Exact { height: 300, width: 200 });
    assert_eq!(cfg.crop_size, CropSize { height: 100, width: 100 });
    assert_eq!(cfg.resample, Resample::Bilinear);
    assert!(!cfg.do_normalize && cfg.do_rescale);
    assert_eq!(parse(r#"{"size": 256}"#).unwrap().size, Size::ShortestEdge(256));
}

#[test]
fn shortest_edge_output_size() {
    // int(336 * 500 / 375) = 448.
    assert_eq!(Size::ShortestEdge(336).output_size(500, 375), (448, 336));
    assert_eq!(Size::ShortestEdge(336).output_size(375, 500), (336, 448));
    assert_eq!(Size::ShortestEdge(336).output_size(500, 500), (336, 336));
    assert_eq!(Size::Exact { height: 10, width: 20 }.output_size(500, 500), (20, 10));
}

// ---------------------------------------------------------------- errors

fn err_message<T: std::fmt::Debug>(r: Result<T, nuwa::preprocess::PreprocessError>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn image_errors_name_the_path() {
    let dir = Scratch::new("preprocess-image-errors");

    let missing = dir.join("missing.png");
    let msg = err_message(load_image(&missing));
    assert!(msg.contains(&missing.display().to_string()) && msg.contains("cannot read"), "{msg}");

    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let msg = err_message(load_image(&empty));
    assert!(msg.contains(&empty.display().to_string()) && msg.contains("empty"), "{msg}");

    let mut png = Vec::new();
    RgbImage::from_pixel(64, 64, Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    let msg = err_message(load_image(&truncated));
    assert!(msg.contains(&truncated.display().to_string()) && msg.contains("decode"), "{msg}");

    let garbage = dir.join("garbage.jpg");
    std::fs::write(&garbage, b"definitely not an image").unwrap();
    let msg = err_message(load_image(&garbage));
    assert!(msg.contains(&garbage.display().to_string()) && msg.contains("format"), "{msg}");

    let msg = err_message(decode_image(&png[..40], "row 17 of train.parquet"));
    assert!(msg.contains("row 17 of train.parquet"), "{msg}");
}

#[test]
fn config_errors_name_the_path_and_field() {
    let dir = Scratch::new("preprocess-config-errors");
    let cases = [
        ("not-json.json", "{\"size\": ", "EOF"),
        ("not-object.json", "[1, 2]", "map"),
        ("bad-type.json", r#"{"do_resize": "yes"}"#, "do_resize"),
        ("bad-mean.json", r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
        ("bad-resample.json", r#"{"resample": 0}"#, "resample"),
        ("bad-size.json", r#"{"size": {"longest_edge": 5}}"#, "size"),
        ("zero-crop.json", r#"{"crop_size": {"height": 0, "width": 3}}"#, "crop_size"),
        ("zero-std.json", r#"{"image_std": [1, 0, 1]}"#, "image_std"),
    ];
    for (name, text, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let msg = err_message(PreprocessConfig::from_file(&path));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    let missing = dir.join("absent.json");
    let msg = err_message(PreprocessConfig::from_file(&missing));
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
}

// ---------------------------------------------------------------- colour types

#[test]
fn colour_types_load_as_rgb() {
    let dir = Scratch::new("preprocess-colour-types");
    let save = |name: &str, f: &dyn Fn(&Path)| {
        let p = dir.join(name);
        f(&p);
        load_image(&p).unwrap()
    };

    let grey = save("grey.png", &|p| ImageBuffer::from_pixel(3, 2, Luma([77u8])).save(p).unwrap());
    assert_eq!(grey.dimensions(), (3, 2));
    assert!(grey.pixels().all(|p| *p == Rgb([77, 77, 77])));

    let grey_alpha = save("grey-alpha.png", &|p| ImageBuffer::from_pixel(2, 2, LumaA([90u8, 10])).save(p).unwrap());
    assert!(grey_alpha.pixels().all(|p| *p == Rgb([90, 90, 90])));

    // Alpha is dropped, not composited: a fully transparent pixel keeps its colour.
    let rgba = save("rgba.png", &|p| ImageBuffer::from_pixel(2, 3, Rgba([10u8, 20, 30, 0])).save(p).unwrap());
    assert_eq!(rgba.dimensions(), (2, 3));
    assert!(rgba.pixels().all(|p| *p == Rgb([10, 20, 30])));

    // 16-bit keeps the high byte, as PIL does for 16-bit colour PNGs.
    let grey16 = save("grey16.png", &|p| ImageBuffer::from_pixel(2, 2, Luma([0x12ffu16])).save(p).unwrap());
    assert!(grey16.pixels().all(|p| *p == Rgb([0x12, 0x12, 0x12])));
    let rgb16 =
        save("rgb16.png", &|p| ImageBuffer::from_pixel(2, 2, Rgb([0x1280u16, 0x34ff, 0xfe7f])).save(p).unwrap());
    assert!(rgb16.pixels().all(|p| *p == Rgb([0x12, 0x34, 0xfe])));
    let rgba16 =
        save("rgba16.png", &|p| ImageBuffer::from_pixel(2, 2, Rgba([0xff00u16, 0x0100, 0x8000, 0])).save(p).unwrap());
    assert!(rgba16.pixels().all(|p| *p == Rgb([0xff, 0x01, 0x80])));

    // GIF is palette-based.
    let two_colours = RgbImage::from_fn(4, 4, |x, _| if x < 2 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
    let gif = save("palette.gif", &|p| two_colours.save(p).unwrap());
    assert_eq!(gif, two_colours);
}
