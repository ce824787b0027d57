//! `nuwa bench` on random-weight presets: the documented JSON, the FLOP model without weights, and
//! clear errors for bad values. Timings are never asserted.
use std::process::{Command, Output};

fn nuwa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nuwa")).args(args).output().expect("run nuwa")
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = nuwa(args);
    assert!(out.status.success(), "nuwa {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

const TIMES: [&str; 5] = ["vision", "stage1", "llm_prefill", "ttft", "decode_per_token"];

#[test]
fn tiny_preset_json_has_every_documented_key() {
    let v = json_of(&[
        "bench",
        "--preset",
        "tiny",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--decode-tokens",
        "2",
        "--budgets",
        "64,128",
        "--json",
    ]);
    let results = v["results"].as_array().unwrap();
    let labels: Vec<_> = results.iter().map(|r| (r["prune"].as_str().unwrap(), r["budget"].as_u64())).collect();
    assert_eq!(labels, [("none", None), ("nuwa", Some(64)), ("nuwa", Some(128))]);
    for r in results {
        for key in TIMES {
            assert!(r["median_ms"][key].as_f64().is_some(), "median_ms.{key} in {r}");
            assert!(r["min_ms"][key].as_f64().unwrap() <= r["max_ms"][key].as_f64().unwrap());
        }
        assert!(r["kv_cache_bytes"].as_u64().unwrap() > 0);
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert!(r["flops"]["vision_only_tflops"].as_f64().unwrap() > 0.0);
        assert!(r["flops"]["total_tflops"].as_f64().unwrap() > r["flops"]["vision_only_tflops"].as_f64().unwrap());
    }
    let none = &results[0];
    for key in TIMES {
        assert_eq!(none["ratio_to_unpruned"][key].as_f64(), Some(1.0), "none ratio {key}");
    }
    let b64 = &results[1];
    assert_eq!((b64["k1"].as_u64(), b64["k2"].as_u64()), (Some(112), Some(16)));
    assert!(b64["ratio_to_unpruned"]["kv_cache"].as_f64().unwrap() < 1.0);
    assert!(b64["kv_cache_bytes"].as_u64() < none["kv_cache_bytes"].as_u64());
    // The top-level FLOP table names every configuration.
    for label in ["none", "nuwa-64", "nuwa-128"] {
        assert!(v["flops"]["vision_only_tflops"][label].is_number(), "{label}");
        assert!(v["flops"]["total_tflops"][label].is_number(), "{label}");
    }
    assert_eq!(v["model"]["name"], "tiny");
    assert_eq!(v["settings"]["prefix_tokens"], 35);
    assert_eq!(v["settings"]["suffix_tokens"], 14);
}

#[test]
fn tiny_preset_prints_tables_and_progress() {
    let out =
        nuwa(&["bench", "--preset", "tiny", "--runs", "1", "--warmup", "0", "--decode-tokens", "1", "--budgets", "64"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in ["median ms", "ratio to unpruned", "nuwa-64", "goals at budget 64", "KV cache"] {
        assert!(stdout.contains(needle), "{needle} missing from\n{stdout}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("run nuwa-64"), "progress goes to stderr");
}

#[test]
fn flops_only_reproduces_the_paper_without_weights() {
    let v = json_of(&["bench", "--preset", "llava-1.5-7b", "--flops-only", "--json"]);
    let unpruned = v["flops"]["vision_only_tflops"]["none"].as_f64().unwrap();
    let b64 = v["flops"]["vision_only_tflops"]["nuwa-64"].as_f64().unwrap();
    assert_eq!(format!("{b64:.4}"), "0.6476");
    assert!((unpruned - 5.973).abs() < 1e-3, "{unpruned}");
    assert_eq!(v["results"][1]["flops"]["vision_only_tflops"].as_f64(), Some(b64));

    let out = nuwa(&["bench", "--preset", "llava-1.5-7b", "--flops-only"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.6476") && text.contains("5.972") && text.contains("5.973"), "{text}");

    // A shorter decoder scales the count with its depth.
    let v = json_of(&["bench", "--preset", "llava-1.5-7b", "--llm-layers", "8", "--flops-only", "--json"]);
    let short = v["flops"]["vision_only_tflops"]["none"].as_f64().unwrap();
    assert!((short * 4.0 - unpruned).abs() < 1e-9);
}

fn fails(args: &[&str]) -> String {
    let out = nuwa(args);
    assert_eq!(out.status.code(), Some(1), "expected exit 1 for {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_values_are_named() {
    let base = ["bench", "--preset", "tiny", "--flops-only"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |extra: &[&str]| fails(&with(extra).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(run(&["--budgets", "0"]).contains("--budgets"));
    assert!(run(&["--budgets", "64,-1"]).contains("--budgets"));
    assert!(run(&["--runs", "0"]).contains("--runs"));
    assert!(run(&["--warmup", "-1"]).contains("--warmup"));
    assert!(run(&["--llm-layers", "1"]).contains("--llm-layers"));
    assert!(run(&["--stage2-layer", "32"]).contains("--stage2-layer"));
    // An unwritable output path fails before anything is measured.
    let err = fails(&["bench", "--preset", "tiny", "--runs", "1", "--save-json", "/no/such/dir/out.json"]);
    assert!(err.contains("--save-json") && err.contains("/no/such/dir/out.json"), "{err}");
    let err = fails(&["bench", "--preset", "gpt-4", "--flops-only"]);
    assert!(err.contains("gpt-4") && err.contains("llava-1.5-7b"), "{err}");
    let err = fails(&["bench", "--model", "/no/such/checkpoint", "--flops-only"]);
    assert!(err.contains("/no/such/checkpoint"), "{err}");
}

#[test]
fn model_or_preset_is_required() {
    let out = nuwa(&["bench", "--flops-only"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--preset") || err.contains("--model"), "{err}");
}

#[test]
fn every_budgeted_method_can_be_measured() {
    let v = json_of(&[
        "bench",
        "--preset",
        "tiny",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--decode-tokens",
        "1",
        "--budgets",
        "64",
        "--prune",
        "fastv,pdrop,visionzip",
        "--json",
    ]);
    let labels: Vec<_> =
        v["results"].as_array().unwrap().iter().map(|r| r["label"].as_str().unwrap().to_string()).collect();
    assert_eq!(labels, ["none", "fastv-64", "pdrop-64", "visionzip-64"]);
    for r in &v["results"].as_array().unwrap()[1..] {
        assert!(r["ratio_to_unpruned"]["kv_cache"].as_f64().unwrap() < 1.0, "{}", r["label"]);
    }
    let err = fails(&["bench", "--preset", "tiny", "--flops-only", "--prune", "manual"]);
    assert!(err.contains("manual"), "{err}");
    let err = fails(&["bench", "--preset", "tiny", "--flops-only", "--prune", "pdrop", "--budgets", "100"]);
    assert!(err.contains("100") || err.contains("pdrop") || err.contains("budget"), "{err}");
}
