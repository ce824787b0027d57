//! Grounding boxes through the path `nuwa ground` takes: the geometry from real LLaVA preprocessing
//! of a landscape, a portrait and a square image, the answer parsed as the harness does, and the
//! box mapped to the original (normalised and in pixels). Known boxes are worked out by hand from
//! `expand2square`'s padding; round trips cover arbitrary boxes.

use image::RgbImage;
use nuwa::ground::{ground_box, prompt};
use nuwa::models::llava::processor::{preprocess, PreprocessConfig};
use nuwa::preprocess::Geometry;
use nuwa::score::rec::PROMPT_PREFIX;
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

/// The geometry LLaVA-1.5's own preprocessing gives an image of this size.
fn geometry(width: u32, height: u32) -> Geometry {
    let cfg = PreprocessConfig::from_file(&fixture("tiny-llava-1.5/preprocessor_config.json")).unwrap();
    preprocess(&RgbImage::new(width, height), &cfg).geometry
}

fn assert_close(got: [f64; 4], want: [f64; 4], tol: f64, what: &str) {
    for i in 0..4 {
        assert!((got[i] - want[i]).abs() <= tol, "{what}: got {got:?}, want {want:?}");
    }
}

/// (image size, answer, box as parsed, box on the original normalised, box in original pixels).
struct Known {
    size: (u32, u32),
    answer: &'static str,
    square: [f64; 4],
    normalized: [f64; 4],
    pixels: [f64; 4],
}

fn known_cases() -> Vec<Known> {
    vec![
        // Landscape 640x480: a 640 square, the image pasted 80 rows down.
        Known {
            size: (640, 480),
            answer: "The box is [0.1, 0.2, 0.5, 0.5].",
            square: [0.1, 0.2, 0.5, 0.5],
            normalized: [0.1, 0.1, 0.5, 0.5],
            pixels: [64.0, 48.0, 320.0, 240.0],
        },
        // Portrait 300x600: a 600 square, the image pasted 150 columns in.
        Known {
            size: (300, 600),
            answer: "[0.3, 0.2, 0.5, 0.8]",
            square: [0.3, 0.2, 0.5, 0.8],
            normalized: [0.1, 0.2, 0.5, 0.8],
            pixels: [30.0, 120.0, 150.0, 480.0],
        },
        // Square 400x400: no padding, all three frames agree.
        Known {
            size: (400, 400),
            answer: "[0.1, 0.2, 0.5, 0.9]",
            square: [0.1, 0.2, 0.5, 0.9],
            normalized: [0.1, 0.2, 0.5, 0.9],
            pixels: [40.0, 80.0, 200.0, 360.0],
        },
        // Odd difference 500x301: the padding is (500 - 301) / 2 = 99 rows, rounded down.
        Known {
            size: (500, 301),
            answer: "[0.1, 0.198, 1.0, 0.8]",
            square: [0.1, 0.198, 1.0, 0.8],
            normalized: [0.1, 0.0, 1.0, 1.0],
            pixels: [50.0, 0.0, 500.0, 301.0],
        },
        // A box reaching into the padding is clamped to the image.
        Known {
            size: (640, 480),
            answer: "[0.0, 0.0, 1.0, 1.0]",
            square: [0.0, 0.0, 1.0, 1.0],
            normalized: [0.0, 0.0, 1.0, 1.0],
            pixels: [0.0, 0.0, 640.0, 480.0],
        },
    ]
}

#[test]
fn known_boxes_map_to_the_original_in_every_orientation() {
    for k in known_cases() {
        let g = geometry(k.size.0, k.size.1);
        let b = ground_box(k.answer, &g).unwrap_or_else(|| panic!("{} parses", k.answer));
        let what = format!("{}x{} {}", k.size.0, k.size.1, k.answer);
        assert_eq!(b.square, k.square, "{what}: parsed box");
        assert_close(b.original_normalized, k.normalized, 1e-12, &what);
        assert_close(b.original_pixels, k.pixels, 1e-9, &what);
    }
}

#[test]
fn boxes_round_trip_through_the_square() {
    let boxes = [[0.0, 0.0, 1.0, 1.0], [0.1, 0.25, 0.6, 0.9], [0.37, 0.02, 0.41, 0.13], [0.5, 0.5, 0.5, 0.5]];
    for (w, h) in [(640, 480), (333, 500), (1000, 237), (256, 256), (1, 7)] {
        let g = geometry(w, h);
        for want in boxes {
            let s = g.original_to_square(want);
            // Models answer in decimals; six places keep the error far below a pixel.
            let answer = format!("[{:.6}, {:.6}, {:.6}, {:.6}]", s[0], s[1], s[2], s[3]);
            let b = ground_box(&answer, &g).unwrap();
            let what = format!("{w}x{h} {want:?}");
            assert_close(b.original_normalized, want, 1e-5 * g.side as f64 / w.min(h) as f64, &what);
            let px = [want[0] * w as f64, want[1] * h as f64, want[2] * w as f64, want[3] * h as f64];
            assert_close(b.original_pixels, px, 1e-5 * g.side as f64, &what);
        }
    }
}

#[test]
fn the_first_box_counts_and_none_is_none() {
    let g = geometry(640, 480);
    let b = ground_box("first [0.1, 0.2, 0.5, 0.5] then [0.0, 0.0, 1.0, 1.0]", &g).unwrap();
    assert_eq!(b.square, [0.1, 0.2, 0.5, 0.5]);
    assert!(ground_box("I cannot see it.", &g).is_none());
    assert!(ground_box("[0.1, 0.2, 0.5]", &g).is_none());
}

#[test]
fn the_prompt_is_the_harness_prefix_then_the_expression() {
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("refcoco-scoring/rec_scoring.json")).unwrap()).unwrap();
    let prefix = fx["prompt_prefix"].as_str().unwrap();
    assert_eq!(prompt("the red thing"), format!("{prefix}the red thing"));
    assert!(prompt("x").starts_with(PROMPT_PREFIX));
}

#[test]
fn llava_next_answers_in_the_original_frame() {
    // LLaVA-NeXT's preprocessing keeps the image's own frame: a box is already relative to the image.
    let dir = fixture("tiny-llava-next");
    let engine = nuwa::Engine::load(&dir, &nuwa::LoadOptions::default()).unwrap();
    let img = nuwa::preprocess::load_image(&dir.join("image.png")).unwrap();
    let (_, g) = engine.pixels(&img).unwrap();
    assert_eq!((g.width, g.height, g.frame), (480, 307, nuwa::preprocess::Frame::Original));
    let b = ground_box("It is at [0.25, 0.5, 0.75, 1.0].", &g).unwrap();
    assert_eq!(b.original_normalized, [0.25, 0.5, 0.75, 1.0]);
    assert_close(b.original_pixels, [120.0, 153.5, 360.0, 307.0], 1e-9, "pixels");
    assert_eq!(g.original_to_square([0.1, 0.2, 0.3, 0.4]), [0.1, 0.2, 0.3, 0.4]);
    // The base view's 24×24 patches tile the whole image.
    assert_close(g.patch_rect(0, 0, 24, 24).unwrap(), [0.0, 0.0, 20.0, 307.0 / 24.0], 1e-9, "first patch");
    assert_close(g.patch_rect(23, 23, 24, 24).unwrap(), [460.0, 307.0 * 23.0 / 24.0, 480.0, 307.0], 1e-9, "last");
}
