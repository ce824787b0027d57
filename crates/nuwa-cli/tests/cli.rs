//! `nuwa` end to end on the tiny fixture: the same tokens and kept sets as the reference, and clear
//! errors (exit status 1, a message naming the flag or file, never a panic) for bad input.
#[path = "../../nuwa/tests/common/scratch.rs"]
mod scratch;

use scratch::Scratch;
use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

fn nuwa<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nuwa")).args(args).output().expect("run nuwa")
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny-llava-1.5/golden.json")).unwrap()).unwrap()
}

/// `generate` on the fixture with the reference pixel values, plus `extra`.
fn generate_args(prompt: &str, extra: &[&str]) -> Vec<String> {
    let model = fixture("tiny-llava-1.5");
    let pixels = fixture("tiny-llava-1.5/golden.safetensors");
    let mut args: Vec<String> = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--pixel-values",
        pixels.to_str().unwrap(),
        "--prompt",
        prompt,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn generate_json(extra: &[&str]) -> serde_json::Value {
    let args = generate_args("What is shown in this image?", &[&["--max-new-tokens", "8", "--json"], extra].concat());
    let out = nuwa(&args);
    assert!(out.status.success(), "nuwa failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn generate_json_unpruned_matches_reference() {
    let v = generate_json(&["--prune", "none"]);
    assert_eq!(v["tokens"], golden()["runs"]["unpruned"]["greedy"]);
    assert_eq!(v["prompt_tokens"], 49);
    for key in ["vision", "prefill", "decode_per_token"] {
        assert!(v["timings_ms"][key].is_number(), "timings_ms.{key}");
    }
    assert_eq!(v["vision"]["avg_vision_tokens"], 576.0);
}

#[test]
fn generate_json_nuwa_matches_reference_at_each_budget() {
    for budget in ["64", "128", "192"] {
        let v = generate_json(&["--prune", "nuwa", "--budget", budget]);
        let run = &golden()["runs"][format!("nuwa{budget}")];
        assert_eq!(v["tokens"], run["greedy"], "budget {budget}");
        assert_eq!(v["vision"]["stage2"], run["stage2_kept_raster"], "budget {budget}");
        assert_eq!(v["vision"]["k1"], run["k1"]);
        assert_eq!(v["vision"]["k2"], run["k2"]);
        assert_eq!(v["vision"]["pillars"].as_array().unwrap().len() as u64, run["pillars"].as_u64().unwrap());
        assert_eq!(v["vision"]["avg_vision_tokens"].as_f64().unwrap(), budget.parse::<f64>().unwrap());
        let stage1 = v["vision"]["stage1"].as_array().unwrap();
        assert!(stage1.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()), "stage1 ascending");
    }
}

#[test]
fn generate_streams_text_from_an_image_file() {
    let out = nuwa(&[
        "generate",
        "--model",
        fixture("tiny-llava-1.5").to_str().unwrap(),
        "--image",
        fixture("tiny-llava-1.5/image.png").to_str().unwrap(),
        "--prompt",
        "What is shown in this image?",
        "--max-new-tokens",
        "8",
        "--prune",
        "none",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim(), golden()["runs"]["unpruned"]["text"].as_str().unwrap().trim());
}

/// Runs a failing command and returns its stderr, checking it failed cleanly.
fn fails<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = nuwa(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    err
}

#[test]
fn bad_flags_are_rejected_with_the_flag_named() {
    let model = fixture("tiny-llava-1.5");
    let m = model.to_str().unwrap();
    let base = ["generate", "--model", m, "--prompt", "hi"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    assert!(fails(&with(&["--max-new-tokens", "0"])).contains("--max-new-tokens"));
    assert!(fails(&with(&["--budget", "0"])).contains("--budget"));
    assert!(fails(&with(&["--pillar-quantile", "1.5"])).contains("--pillar-quantile"));
    assert!(fails(&with(&["--distance", "0"])).contains("--distance"));
    assert!(fails(&with(&["--pillar-quantile", "-0.1"])).contains("--pillar-quantile"));
    assert!(fails(&with(&["--temperature", "-1"])).contains("--temperature"));
}

#[test]
fn stage2_layer_out_of_range_is_rejected() {
    let err = fails(&generate_args("hi", &["--stage2-layer", "32"]));
    assert!(err.contains("--stage2-layer") && err.contains("1..=31"), "{err}");
}

#[test]
fn missing_model_dir_is_named() {
    let err = fails(&["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn score_rec_prints_the_means() {
    let dir = Scratch::new("cli-score");
    let file = dir.join("preds.jsonl");
    std::fs::write(
        &file,
        "{\"response\": \"[0.1, 0.1, 0.5, 0.5]\", \"bbox\": [0.1, 0.1, 0.5, 0.5]}\n\
         {\"response\": \"no box\", \"bbox\": [0.2, 0.2, 0.4, 0.4]}\n",
    )
    .unwrap();
    let out = nuwa(&["score", "rec", "--predictions", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 2);
    assert_eq!(v["iou"], 0.5);
    assert_eq!(v["acc@0.5"], 0.5);
    assert_eq!(v["center"], 0.5);

    std::fs::write(&file, "{\"response\": \"[0, 0, 1, 1]\", \"bbox\": [0.1]}\n").unwrap();
    let err = fails(&["score", "rec", "--predictions", file.to_str().unwrap()]);
    assert!(err.contains("preds.jsonl:1") && err.contains("bbox"), "{err}");
    // Nothing to score, and boxes without area, are errors rather than zeros.
    std::fs::write(&file, "").unwrap();
    assert!(fails(&["score", "rec", "--predictions", file.to_str().unwrap()]).contains("no predictions"));
    std::fs::write(&file, "{\"response\": \"[0, 0, 1, 1]\", \"bbox\": [0.5, 0.5, 0.5, 0.9]}\n").unwrap();
    let err = fails(&["score", "rec", "--predictions", file.to_str().unwrap()]);
    assert!(err.contains("preds.jsonl:1") && err.contains("area"), "{err}");
}

#[test]
fn every_method_runs_and_reports_what_it_kept() {
    for (method, policy, avg) in [
        ("fastv", "original", 64.125),
        ("visionzip", "contiguous", 64.0),
        ("pool", "contiguous", 64.0),
        ("random", "contiguous", 64.0),
        ("divprune", "contiguous", 64.0),
        ("dart", "original", 99.75),
        ("pdrop", "contiguous", 79.1875),
        ("sparsevlm", "contiguous", 82.25),
        ("vispruner", "contiguous", 64.0),
    ] {
        let v = generate_json(&["--prune", method, "--budget", "64"]);
        assert_eq!(v["vision"]["method"], method);
        assert_eq!(v["vision"]["positions"], policy, "{method}");
        assert_eq!(v["vision"]["avg_vision_tokens"].as_f64().unwrap(), avg, "{method}");
        assert_eq!(v["tokens"].as_array().unwrap().len(), 8);
    }
    let v = generate_json(&["--prune", "fastv", "--budget", "64", "--positions", "contiguous"]);
    assert_eq!(v["vision"]["positions"], "contiguous");
    assert_eq!(v["vision"]["cuts"][0]["kept"].as_array().unwrap().len(), 30);
}

#[test]
fn manual_keep_file_and_its_errors() {
    let dir = Scratch::new("cli-keep");
    let keep = dir.join("keep.json");
    std::fs::write(&keep, "[575, 0, 24, 300]").unwrap();
    let v = generate_json(&["--prune", "manual", "--keep-file", keep.to_str().unwrap(), "--positions", "original"]);
    assert_eq!(v["vision"]["stage1"], serde_json::json!([0, 24, 300, 575]));
    std::fs::write(&keep, "[0, 576]").unwrap();
    let err = fails(&generate_args("hi", &["--prune", "manual", "--keep-file", keep.to_str().unwrap()]));
    assert!(err.contains("576") && err.contains("--keep-file"), "{err}");
    std::fs::write(&keep, "{\"not\": \"a list\"}").unwrap();
    let err = fails(&generate_args("hi", &["--prune", "manual", "--keep-file", keep.to_str().unwrap()]));
    assert!(err.contains("keep.json") && err.contains("JSON list"), "{err}");
    assert!(fails(&generate_args("hi", &["--prune", "manual"])).contains("--keep-file"));
    // A keep list given to another method is refused, not silently ignored.
    std::fs::write(&keep, "[0, 1]").unwrap();
    let err = fails(&generate_args("hi", &["--prune", "nuwa", "--keep-file", keep.to_str().unwrap()]));
    assert!(err.contains("--keep-file") && err.contains("manual"), "{err}");
    assert!(fails(&generate_args("hi", &["--prune", "pdrop", "--budget", "100"])).contains("--budget 100"));
}

#[test]
fn a_budget_above_the_patch_count_reports_what_ran() {
    let v = generate_json(&["--prune", "nuwa", "--budget", "5000"]);
    assert_eq!(v["vision"]["budget"], 576);
    assert_eq!(v["vision"]["budget_requested"], 5000);
}

/// `generate --json` with 8 tokens on the fixture model in `dir`, the image given as `input` (a flag and
/// its path), plus `extra`; the output, after checking the command succeeded.
fn fixture_json(
    dir: &std::path::Path,
    input: (&str, &std::path::Path),
    prompt: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["generate", "--model", dir.to_str().unwrap(), input.0, input.1.to_str().unwrap()];
    args.extend_from_slice(&["--prompt", prompt, "--max-new-tokens", "8", "--json"]);
    args.extend_from_slice(extra);
    let out = nuwa(&args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn llava_next_from_the_image_file_and_from_pixel_values_matches_the_reference() {
    let dir = fixture("tiny-llava-next");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let image = dir.join("image.png");
    let pixels = dir.join("golden.safetensors");
    for (input_flag, input) in [("--image", &image), ("--pixel-values", &pixels)] {
        for (run, prune) in
            [("unpruned", &["--prune", "none"][..]), ("nuwa160", &["--prune", "nuwa", "--budget", "160"])]
        {
            let v = fixture_json(&dir, (input_flag, input), "What is shown in this image?", prune);
            assert_eq!(v["tokens"], golden["runs"][run]["greedy"], "{input_flag} {run}");
            assert_eq!(v["vision"]["grids"], serde_json::json!([[24, 24], [24, 38]]));
            assert_eq!(v["vision"]["newlines"], 24, "every row's newline enters the decoder");
        }
    }
}

#[test]
fn qwen_from_the_image_file_and_from_pixel_values_matches_the_reference() {
    let dir = fixture("tiny-qwen2.5-vl");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let (image, pixels) = (dir.join("image.png"), dir.join("golden.safetensors"));
    let runs: [(&str, &std::path::Path, &str, &[&str]); 6] = [
        ("--image", &image, "nuwa0.25", &["--budget", "25%"]),
        ("--image", &image, "nuwa0.5", &[]),
        ("--image", &image, "nuwa0.75", &["--stage1-ratio", "0.85", "--stage2-ratio", "0.7", "--top-n", "4"]),
        ("--image", &image, "nuwa0.25_released", &["--budget", "25%", "--as-released"]),
        ("--pixel-values", &pixels, "unpruned", &["--prune", "none"]),
        ("--pixel-values", &pixels, "nuwa0.75_released", &["--budget", "75%", "--as-released"]),
    ];
    for (input_flag, input, run, extra) in runs {
        let v = fixture_json(&dir, (input_flag, input), "Describe this image.", extra);
        assert_eq!(v["tokens"], golden["runs"][run]["greedy"], "{input_flag} {run}");
        assert_eq!(v["vision"]["grids"], serde_json::json!([[9, 14]]), "{run}");
        if let Some(k2) = golden["runs"][run]["k2"].as_u64() {
            assert_eq!(v["vision"]["k2"], k2, "{run}");
        }
        // A preset reports its keep ratio (the default one too) and no token budget.
        if let Some(r) = run.strip_prefix("nuwa").filter(|_| !extra.contains(&"--top-n")) {
            let r: f64 = r.trim_end_matches("_released").parse().unwrap();
            assert_eq!(v["vision"]["keep_ratio"], r, "{run}");
            assert!(v["vision"]["budget"].is_null(), "{run}: {}", v["vision"]["budget"]);
        }
    }
    let base = ["generate", "--model", dir.to_str().unwrap(), "--image", image.to_str().unwrap(), "--prompt", "Hi"];
    for (extra, needles) in [
        (&["--budget", "30%"][..], &["--budget", "30%", "25%, 50%, 75%"][..]),
        (&["--budget", "64"], &["--budget", "keep ratio"]),
        (&["--stage1-ratio", "0.3"], &["--stage2-ratio", "--top-n"]),
    ] {
        let err = fails(&[&base[..], extra].concat());
        assert!(needles.iter().all(|n| err.contains(n)), "{extra:?}: {err}");
    }
}
