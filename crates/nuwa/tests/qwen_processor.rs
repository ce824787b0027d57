//! Qwen2.5-VL's image processor against the fixture `tests/fixtures/tiny-qwen2.5-vl` (made with
//! transformers' PIL processor): smart resize by the spec's formulas, the golden `pixel_values` and
//! `image_grid_thw`, the patch row order on a portrait image with odd merged grids, and the config's errors.
mod common;
use common::scratch::Scratch;

use candle_core::{Device, Tensor};
use image::{Rgb, RgbImage};
use nuwa::models::qwen2_5_vl::processor::{preprocess, smart_resize, PreprocessConfig};
use std::collections::HashMap;
use std::path::PathBuf;

fn dir() -> PathBuf {
    common::fixtures().join("tiny-qwen2.5-vl")
}

fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("golden.safetensors"), &Device::Cpu).unwrap()
}

/// smart_resize with the release's factor and pixel budget.
fn release(height: u32, width: u32) -> nuwa::Result<(u32, u32)> {
    smart_resize(height, width, 28, 3136, 12_845_056)
}

// Expected sizes worked out from the spec's formulas (§4.2).
#[test]
fn smart_resize_follows_the_spec() {
    // The fixture: 260/28 = 9.29 → 9, 406/28 = 14.5 → 14 (a tie, to even).
    assert_eq!(release(260, 406).unwrap(), (252, 392));
    // Portrait: the same with the sides exchanged.
    assert_eq!(release(406, 260).unwrap(), (392, 252));
    // Ties both ways: 70/28 = 2.5 → 2, 98/28 = 3.5 → 4 (half-up or half-away would give 84, 112).
    assert_eq!(release(70, 98).unwrap(), (56, 112));
    // Over max_pixels: 4004·6020 > 12845056, β = √(24e6 / 12845056) = 1.367 → ⌊104.5⌋, ⌊156.8⌋ multiples.
    assert_eq!(release(4000, 6000).unwrap(), (2912, 4368));
    // transformers' own default budget (28·28·1280) on a 4000×3000 photo.
    assert_eq!(smart_resize(3000, 4000, 28, 3136, 1_003_520).unwrap(), (840, 1148));
    // Over max_pixels with a side floored to 0 multiples: max(F, ·) keeps 28.
    assert_eq!(smart_resize(28, 5600, 28, 3136, 7840).unwrap(), (28, 1232));
    // Under min_pixels: 28·28 < 3136, β = √(3136 / 600) = 2.286 → ⌈1.63⌉, ⌈2.45⌉ multiples.
    assert_eq!(release(20, 30).unwrap(), (56, 84));
    // Thin strips at exactly 200:1 upscale through the min_pixels branch.
    assert_eq!(release(1, 200).unwrap(), (28, 812));
    assert_eq!(release(10, 2000).unwrap(), (28, 812));
    assert_eq!(release(2000, 10).unwrap(), (812, 28));
}

#[test]
fn smart_resize_refuses_what_transformers_refuses() {
    // 2010 / 10 = 201 > 200: an error naming the image's size.
    let msg = release(10, 2010).unwrap_err().to_string();
    assert!(msg.contains("2010×10") && msg.contains("200"), "{msg}");
    let msg = release(2010, 10).unwrap_err().to_string();
    assert!(msg.contains("10×2010"), "{msg}");
    assert!(release(0, 10).is_err());
    assert!(smart_resize(10, 10, 0, 3136, 12_845_056).is_err());
    // Budgets no image can meet give errors, not overflowing sides.
    assert!(smart_resize(u32::MAX / 2, u32::MAX / 3, 28, u64::MAX, u64::MAX).is_err());
    assert!(smart_resize(10, 10, 28, 0, 12_845_056).is_err(), "10/28 rounds to no pixels with min_pixels = 0");
}

#[test]
fn pixels_match_the_golden_pixel_values() {
    let img = nuwa::preprocess::load_image(&dir().join("image.png")).unwrap();
    assert_eq!(img.dimensions(), (406, 260));
    let cfg = PreprocessConfig::from_file(&dir().join("preprocessor_config.json")).unwrap();
    let out = preprocess(&img, &cfg).unwrap();
    assert_eq!(out.resized_hw, (252, 392));

    let golden = golden();
    let grid: Vec<i64> = golden["image_grid_thw"].to_vec1().unwrap();
    assert_eq!(out.grid_thw.map(|v| v as i64).to_vec(), grid);
    let expected: Vec<Vec<f32>> = golden["pixel_values"].to_vec2().unwrap();
    assert_eq!(out.pixels.len(), expected.len() * 1176);
    let (mut max, mut worst) = (0f32, 0);
    for (i, (a, b)) in out.pixels.iter().zip(expected.iter().flatten()).enumerate() {
        let d = (a - b).abs();
        if d > max {
            (max, worst) = (d, i);
        }
    }
    println!("pixel_values: max |Δ| = {max:e} (row {}, value {})", worst / 1176, worst % 1176);
    assert!(max <= 1e-6, "max |Δ| = {max} at row {}, value {}", worst / 1176, worst % 1176);
}

/// transformers' rescale (in f64, stored as f32) and normalise (in f32), for one byte of channel `c`.
fn normalised(u: u8, c: usize) -> f32 {
    let cfg = PreprocessConfig::default();
    ((u as f64 * (1.0 / 255.0)) as f32 - cfg.image_mean[c] as f32) / cfg.image_std[c] as f32
}

#[test]
fn rows_follow_the_spec_order_on_a_portrait_image_with_odd_merged_grids() {
    // 84×140 is already a multiple of 28 within the budget, so the resize keeps every pixel: grid 10×6
    // patches, 5×3 merged tokens (odd both ways).
    let byte = |x: u32, y: u32, c: u32| ((x * 7 + y * 13 + c * 50) % 256) as u8;
    let img = RgbImage::from_fn(84, 140, |x, y| Rgb([byte(x, y, 0), byte(x, y, 1), byte(x, y, 2)]));
    let out = preprocess(&img, &PreprocessConfig::default()).unwrap();
    assert_eq!(out.resized_hw, (140, 84));
    assert_eq!(out.grid_thw, [1, 10, 6]);
    assert_eq!(out.pixels.len(), 60 * 1176);
    let half_w = 6 / 2;
    for row in 0..10 {
        for col in 0..6 {
            let (by, dy, bx, dx) = (row / 2, row % 2, col / 2, col % 2);
            let r = (by * half_w + bx) * 4 + 2 * dy + dx;
            for c in 0..3 {
                for t in 0..2 {
                    for py in 0..14 {
                        for px in 0..14 {
                            let (x, y) = ((col * 14 + px) as u32, (row * 14 + py) as u32);
                            let got = out.pixels[r * 1176 + ((c * 2 + t) * 14 + py) * 14 + px];
                            let want = normalised(byte(x, y, c as u32), c);
                            assert_eq!(got, want, "patch ({row}, {col}) → row {r}: c {c}, t {t}, pixel ({py}, {px})");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn absurd_sizes_are_errors_not_allocations() {
    let img = RgbImage::from_pixel(10, 10, Rgb([1, 2, 3]));
    let upscaled = PreprocessConfig { min_pixels: 1 << 40, max_pixels: 1 << 41, ..Default::default() };
    let msg = preprocess(&img, &upscaled).unwrap_err().to_string();
    assert!(msg.contains("max_pixels"), "{msg}");
    let long_clip = PreprocessConfig { temporal_patch_size: u32::MAX, ..Default::default() };
    assert!(preprocess(&img, &long_clip).is_err());
    let huge_patch = PreprocessConfig { patch_size: u32::MAX, ..Default::default() };
    assert!(preprocess(&img, &huge_patch).is_err());
    let no_merge = PreprocessConfig { merge_size: 0, ..Default::default() };
    assert!(preprocess(&img, &no_merge).is_err());
}

#[test]
fn config_reads_the_fixture_and_transformers_defaults() {
    let cfg = PreprocessConfig::from_file(&dir().join("preprocessor_config.json")).unwrap();
    let expected = PreprocessConfig {
        min_pixels: 3136,
        max_pixels: 12_845_056,
        patch_size: 14,
        temporal_patch_size: 2,
        merge_size: 2,
        image_mean: [0.48145466, 0.4578275, 0.40821073],
        image_std: [0.26862954, 0.26130258, 0.27577711],
    };
    assert_eq!(cfg, expected);
    assert_eq!(PreprocessConfig::default(), expected);

    let dir = Scratch::new("qwen-processor-defaults");
    let read = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        PreprocessConfig::from_file(&path).unwrap()
    };
    // Absent keys take transformers' class defaults, whose max_pixels is 28·28·1280.
    assert_eq!(read("empty.json", "{}"), PreprocessConfig { max_pixels: 1_003_520, ..expected.clone() });
    // Newer transformers also save the budget as `size`; explicit min/max_pixels win over it.
    let sized = read("size.json", r#"{"size": {"shortest_edge": 1000, "longest_edge": 200000}}"#);
    assert_eq!((sized.min_pixels, sized.max_pixels), (1000, 200_000));
    let both = read("both.json", r#"{"size": {"shortest_edge": 1000, "longest_edge": 200000}, "max_pixels": 300000}"#);
    assert_eq!((both.min_pixels, both.max_pixels), (1000, 300_000));
}

#[test]
fn config_errors_name_the_file_and_field() {
    let dir = Scratch::new("qwen-processor-errors");
    let cases = [
        ("not-json.json", "{\"min_pixels\": ", "malformed"),
        ("not-object.json", "[1, 2]", "malformed"),
        ("wrong-type.json", r#"{"min_pixels": "3136"}"#, "min_pixels"),
        ("negative.json", r#"{"max_pixels": -1}"#, "max_pixels"),
        ("short-mean.json", r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
        ("zero-std.json", r#"{"image_std": [1, 0, 1]}"#, "image_std"),
        ("zero-patch.json", r#"{"patch_size": 0}"#, "patch_size"),
        ("max-below-min.json", r#"{"min_pixels": 5000, "max_pixels": 4000}"#, "max_pixels"),
        ("half-size.json", r#"{"size": {"shortest_edge": 10}}"#, "size"),
        ("no-normalise.json", r#"{"do_normalize": false}"#, "do_normalize"),
        ("bilinear.json", r#"{"resample": 2}"#, "resample"),
        ("rescale.json", r#"{"rescale_factor": 1.0}"#, "rescale_factor"),
    ];
    for (name, text, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let msg = PreprocessConfig::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    let missing = dir.join("absent.json");
    let msg = PreprocessConfig::from_file(&missing).unwrap_err().to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
}

#[test]
fn max_pixels_override() {
    let err = PreprocessConfig::default().with_max_pixels(3135).unwrap_err();
    assert_eq!(err.field(), Some("max_pixels"), "{err}");
    let at_min = PreprocessConfig::default().with_max_pixels(3136).unwrap();
    assert_eq!(at_min.max_pixels, 3136);
    // A lowered budget shrinks the fixture: 252·392 > 50000, β = √(105560 / 50000) → 168×252.
    let img = nuwa::preprocess::load_image(&dir().join("image.png")).unwrap();
    let out = preprocess(&img, &PreprocessConfig::default().with_max_pixels(50_000).unwrap()).unwrap();
    assert_eq!(out.resized_hw, (168, 252));
    assert_eq!(out.grid_thw, [1, 12, 18]);
    assert_eq!(out.pixels.len(), 12 * 18 * 1176);
}
