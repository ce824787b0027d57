//! The binary against hostile and broken input, run under an address-space limit and a deadline: a
//! decoder that allocates what a header claims, or a read that never ends, fails the test with a
//! message instead of taking the machine down or hanging the suite. Each case must end with exit
//! status 1 (not a signal) and a message that names the file or flag.
#[path = "../../nuwa/tests/common/hostile.rs"]
mod hostile;
#[path = "../../nuwa/tests/common/scratch.rs"]
mod scratch;

use hostile::{gif_claiming, jpeg_claiming, png_claiming, webp_claiming};
use scratch::Scratch;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far below what any bomb here would allocate (2–17 GB), well above what the fixture needs (~0.5 GB).
const ADDRESS_SPACE_KIB: u64 = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(120);

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `nuwa args` under `ulimit -v` and [`DEADLINE`]; killed (and the test failed) past the deadline.
fn bounded(args: &[&str]) -> Ran {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_nuwa"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nuwa under sh");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).ok();
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            child.kill().ok();
            child.wait().ok();
            panic!("nuwa {args:?} still running after {DEADLINE:?}: {}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Exit status 1 with every one of `needles` in the message, and no panic.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let r = bounded(args);
    assert_eq!(r.code, Some(1), "nuwa {args:?} must fail with status 1 (a signal means it crashed): {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "nuwa {args:?} panicked: {}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "nuwa {args:?}: {n:?} missing from: {}", r.stderr);
    }
    r.stderr
}

fn generate(image: &Path) -> Vec<String> {
    let model = fixture("tiny-llava-1.5");
    ["generate", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(), "--prompt", "What is this?"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--max-new-tokens", "2", "--prune", "nuwa", "--budget", "64"].map(String::from))
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_limit_leaves_room_for_a_real_run() {
    let r = bounded(&strs(&generate(&fixture("tiny-llava-1.5/image.png"))));
    assert_eq!(r.code, Some(0), "the fixture runs under the limit: {}", r.stderr);
}

#[test]
fn decompression_bombs_are_refused_within_the_limit() {
    let dir = Scratch::new("cli-hostile-bombs");
    for (name, bytes) in [
        ("bomb.png", png_claiming(100_000)),
        ("bomb.jpg", jpeg_claiming(60_000)),
        ("bomb.gif", gif_claiming(60_000)),
        ("bomb.webp", webp_claiming(16_384)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        refused(&strs(&generate(&path)), &[path.to_str().unwrap()]);
    }
}

#[test]
fn special_and_truncated_files_are_refused_without_blocking() {
    let dir = Scratch::new("cli-hostile-special");
    let fifo = dir.join("pipe.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [fifo.as_path(), Path::new("/dev/zero"), &dir] {
        refused(&strs(&generate(path)), &["not a regular file"]);
    }
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::open(fixture("tiny-llava-1.5/image.png")).unwrap().write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    let half = dir.join("half.jpg");
    std::fs::write(&half, &jpeg[..jpeg.len() / 2]).unwrap();
    refused(&strs(&generate(&half)), &["half.jpg", "truncated"]);
}

#[test]
fn an_eval_over_hostile_rows_records_each_and_finishes() {
    let dir = Scratch::new("cli-hostile-eval");
    std::fs::copy(fixture("tiny-llava-1.5/image.png"), dir.join("ok.png")).unwrap();
    std::fs::write(dir.join("bomb.png"), png_claiming(100_000)).unwrap();
    assert!(Command::new("mkfifo").arg(dir.join("pipe.png")).status().unwrap().success());
    let row = |image: &str, bbox: serde_json::Value| {
        json!({"image": image, "expression": "the thing", "bbox": bbox}).to_string()
    };
    let lines = [
        row("ok.png", json!([2, 2, 10, 10])),
        row("bomb.png", json!([2, 2, 10, 10])),
        row("pipe.png", json!([2, 2, 10, 10])),
        row("ok.png", json!([1e308, 2, 1e308, 4])),
        row("ok.png", json!([2, 2, 10, 10])),
    ];
    let data = dir.join("rec.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = dir.join("out");
    let model = fixture("tiny-llava-1.5");
    let r = bounded(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--task",
        "rec",
        "--prune",
        "none",
        "--max-new-tokens",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let summary: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rows: Vec<u64> = summary["errors"].as_array().unwrap().iter().map(|e| e["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, [2, 3, 4], "{}", summary["errors"]);
    assert_eq!(summary["n_samples"], 2);
    let predictions = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
    assert!(!predictions.contains("null"), "nothing non-finite on file: {predictions}");
}

#[test]
fn configs_that_would_compute_nan_are_refused_by_field() {
    let dir = Scratch::new("cli-hostile-nan-config");
    let src = fixture("tiny-llava-1.5");
    for f in ["model.safetensors", "tokenizer.json", "preprocessor_config.json", "generation_config.json"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    assert!(config.contains(r#""rope_theta": 10000.0"#));
    std::fs::write(dir.join("config.json"), config.replace(r#""rope_theta": 10000.0"#, r#""rope_theta": 0"#)).unwrap();
    let mut args = generate(&fixture("tiny-llava-1.5/image.png"));
    args[2] = dir.to_str().unwrap().to_owned();
    refused(&strs(&args), &["config.json", "rope_theta"]);
}

#[test]
fn a_benchmark_larger_than_the_memory_is_refused_before_allocating() {
    let err = refused(&["bench", "--preset", "llava-1.5-7b", "--runs", "1"], &["--llm-layers", "available"]);
    assert!(err.contains("GB"), "{err}");
}
