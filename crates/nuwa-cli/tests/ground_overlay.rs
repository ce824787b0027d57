//! `nuwa ground` and `--overlay` end to end on the tiny fixture. Its random weights rarely produce
//! a box, so these check the shape of the output and the pictures, and the errors (exit status 1,
//! a message naming the flag or path).
#[path = "../../nuwa/tests/common/scratch.rs"]
mod scratch;

use scratch::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel).to_str().unwrap().to_owned()
}

fn nuwa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nuwa")).args(args).output().expect("run nuwa")
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr should mention {n:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn ground_json_reports_the_box_the_vision_and_writes_the_overlay() {
    let dir = Scratch::new("cli-ground-json");
    let png = dir.join("ground.png");
    let (model, image) = (fixture("tiny-llava-1.5"), fixture("tiny-llava-1.5/image.png"));
    let out = nuwa(&[
        "ground",
        "--model",
        &model,
        "--image",
        &image,
        "--expression",
        "the red thing",
        "--json",
        "--budget",
        "64",
        "--max-new-tokens",
        "12",
        "--overlay",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "nuwa ground failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert!(v["text"].is_string());
    assert_eq!(v["expression"], "the red thing");
    assert_eq!(v["image"], serde_json::json!({ "width": 500, "height": 375 }));
    match &v["box"] {
        serde_json::Value::Null => {}
        b => {
            for key in ["square", "original_normalized", "original_pixels"] {
                assert_eq!(b[key].as_array().map(Vec::len), Some(4), "box.{key}: {b}");
            }
        }
    }
    assert_eq!(v["vision"]["k1"], 112);
    assert_eq!(v["vision"]["k2"], 16);
    assert_eq!(v["vision"]["stage2"].as_array().unwrap().len(), 16);
    for key in ["vision", "stage1", "prefill", "decode_per_token"] {
        assert!(v["timings_ms"][key].is_number(), "timings_ms.{key}");
    }
    assert_eq!(png_size(&png), (500, 375), "the overlay has the image's size");
}

#[test]
fn ground_text_names_the_three_box_forms_or_says_there_is_none() {
    let (model, image) = (fixture("tiny-llava-1.5"), fixture("tiny-llava-1.5/image.png"));
    let out = nuwa(&[
        "ground",
        "--model",
        &model,
        "--image",
        &image,
        "--expression",
        "the red thing",
        "--max-new-tokens",
        "4",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("box: none") || last.starts_with("box, original (pixels)"),
        "the answer is followed by the box: {stdout}"
    );
}

#[test]
fn generate_writes_overlays_at_the_image_size_one_panel_per_grid() {
    let dir = Scratch::new("cli-generate-overlay");
    let (model, image) = (fixture("tiny-llava-1.5"), fixture("tiny-llava-1.5/image.png"));
    for (name, extra) in [("kept.png", &[][..]), ("heat.png", &["--heatmap"][..])] {
        let png = dir.join(name);
        let mut args = vec![
            "generate",
            "--model",
            &model,
            "--image",
            &image,
            "--prompt",
            "What is shown?",
            "--max-new-tokens",
            "2",
            "--json",
            "--overlay",
            png.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = nuwa(&args);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout stays one JSON object");
        assert_eq!(png_size(&png), (500, 375), "{name}");
    }
    // LLaVA-NeXT: the crop grid over the 480×307 picture, the base view's grid in a second panel.
    let png = dir.join("next.png");
    let (model, image) = (fixture("tiny-llava-next"), fixture("tiny-llava-next/image.png"));
    let out = nuwa(&[
        "generate",
        "--model",
        &model,
        "--image",
        &image,
        "--prompt",
        "What is shown?",
        "--budget",
        "160",
        "--max-new-tokens",
        "1",
        "--overlay",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "next: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(png_size(&png), (2 * 480 + 4, 307), "next: two panels and a 4-pixel gap");
}

#[test]
fn overlay_needs_an_image_file() {
    let dir = Scratch::new("cli-overlay-pixels");
    let png = dir.join("o.png");
    let out = nuwa(&[
        "generate",
        "--model",
        &fixture("tiny-llava-1.5"),
        "--pixel-values",
        &fixture("tiny-llava-1.5/golden.safetensors"),
        "--prompt",
        "hi",
        "--overlay",
        png.to_str().unwrap(),
    ]);
    assert_fails_with(&out, &["--overlay", "--image", "--pixel-values"]);
    assert!(!png.exists());
}

#[test]
fn overlay_into_a_missing_directory_fails_before_the_model_runs() {
    let dir = Scratch::new("cli-overlay-missing");
    let png = dir.join("no-such-dir/o.png");
    let (model, image) = (fixture("tiny-llava-1.5"), fixture("tiny-llava-1.5/image.png"));
    let out = nuwa(&[
        "ground",
        "--model",
        &model,
        "--image",
        &image,
        "--expression",
        "x",
        "--overlay",
        png.to_str().unwrap(),
    ]);
    assert_fails_with(&out, &["--overlay", "no-such-dir"]);
    assert!(out.stdout.is_empty(), "nothing ran");
}

#[test]
fn ground_rejects_an_empty_expression_and_a_missing_image() {
    let model = fixture("tiny-llava-1.5");
    let out =
        nuwa(&["ground", "--model", &model, "--image", &fixture("tiny-llava-1.5/image.png"), "--expression", " "]);
    assert_fails_with(&out, &["--expression"]);
    let out = nuwa(&["ground", "--model", &model, "--image", "/no/such/image.png", "--expression", "x"]);
    assert_fails_with(&out, &["/no/such/image.png"]);
}
