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

/// (K1, K2) of Nüwa's keep ratio on an `h`×`w` merged grid, by the spec's rules (grid padded to even sides).
fn keep_counts(ratio: f64, (h, w): (usize, usize)) -> (u64, Option<u64>) {
    use nuwa::prune::nuwa::Keep;
    let r = Keep::Ratio(ratio).ratios().unwrap();
    let k1 = Keep::k1(&r, h * w, h.div_ceil(2) * w.div_ceil(2));
    (k1 as u64, Keep::k2(&r, k1).map(|k| k as u64))
}

fn per_layer(r: &serde_json::Value) -> Vec<u64> {
    r["vision_tokens_per_layer"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

const KEEP_RATIOS: [(&str, f64); 3] = [("nuwa-25%", 0.25), ("nuwa-50%", 0.5), ("nuwa-75%", 0.75)];

#[test]
fn qwen_preset_schedules_the_keep_ratios_of_its_image() {
    // Defaults: a 1000×750 image (27×36 merged tokens) and the 25/50/75 % keep ratios.
    let v = json_of(&["bench", "--preset", "qwen2.5-vl-7b", "--flops-only", "--json"]);
    let m = &v["model"];
    assert_eq!((m["family"].as_str(), m["image_tokens"].as_u64()), (Some("qwen2.5-vl"), Some(972)));
    assert_eq!((m["grid"].to_string(), m["image_size"].to_string()), ("[27,36]".into(), "[1008,756]".into()));
    assert_eq!(
        (m["llm_layers"].as_u64(), m["kv_heads"].as_u64(), m["parameters"].as_u64()),
        (Some(28), Some(4), Some(8_292_166_656))
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(
        results.iter().map(|r| r["label"].as_str().unwrap()).collect::<Vec<_>>(),
        ["none", "nuwa-25%", "nuwa-50%", "nuwa-75%"]
    );
    assert_eq!(per_layer(&results[0]), vec![972; 28]);
    for (r, (label, ratio)) in results[1..].iter().zip(KEEP_RATIOS) {
        let (k1, k2) = keep_counts(ratio, (27, 36));
        assert_eq!((r["keep_ratio"].as_f64(), r["budget"].as_u64()), (Some(ratio), None), "{label}");
        assert_eq!(
            (r["k1"].as_u64(), r["k2"].as_u64(), r["stage2_layer"].as_u64()),
            (Some(k1), k2, Some(15)),
            "{label}"
        );
        assert_eq!(per_layer(r), [vec![k1; 15], vec![k2.unwrap(); 13]].concat(), "{label}");
        let ratio = r["flops"]["vision_only_ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio < 1.0, "{label}: {ratio}");
    }

    // Another image size changes N; a shorter decoder moves the cut to one layer after its middle.
    let v = json_of(&[
        "bench",
        "--preset",
        "qwen2.5-vl-7b",
        "--image-size",
        "448x448",
        "--llm-layers",
        "4",
        "--budgets",
        "50%",
        "--flops-only",
        "--json",
    ]);
    assert_eq!(v["model"]["image_tokens"].as_u64(), Some(256));
    let (k1, k2) = keep_counts(0.5, (16, 16));
    assert_eq!(per_layer(&v["results"][1]), [k1, k1, k1, k2.unwrap()]);
}

#[test]
fn qwen_checkpoint_measures_keep_ratios_against_unpruned_in_one_run() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-qwen2.5-vl");
    let v = json_of(&[
        "bench",
        "--model",
        fixture,
        "--llm-layers",
        "2",
        "--vision-layers",
        "2",
        "--image-size",
        "224x224",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--decode-tokens",
        "1",
        "--prune",
        "none,nuwa",
        "--budgets",
        "25%,50%,75%",
        "--json",
    ]);
    assert_eq!((v["model"]["image_tokens"].as_u64(), v["model"]["kv_heads"].as_u64()), (Some(64), Some(2)));
    // The checkpoint's tokenizer writes the chat template around the question.
    let text = v["settings"]["prefix_tokens"].as_u64().unwrap() + v["settings"]["suffix_tokens"].as_u64().unwrap();
    // K and V of 2 heads × 16 per cached position and layer, f32.
    let kv_bytes = |per_layer: &[u64]| per_layer.iter().map(|t| (t + text) * 2 * 2 * 16 * 4).sum::<u64>();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let none = &results[0];
    assert_eq!(per_layer(none), [64, 64]);
    assert_eq!(none["kv_cache_prefill_bytes"].as_u64(), Some(kv_bytes(&[64, 64])));
    for (r, (label, ratio)) in results[1..].iter().zip(KEEP_RATIOS) {
        let (k1, k2) = keep_counts(ratio, (8, 8));
        assert_eq!(r["label"].as_str(), Some(label));
        // Two layers: stage 2 cuts before layer 1; the pipeline kept what the schedule says.
        assert_eq!(per_layer(r), [k1, k2.unwrap()], "{label}");
        assert_eq!((r["measured_k1"].as_u64(), r["measured_k2"].as_u64()), (Some(k1), k2), "{label}");
        assert_eq!(r["kv_cache_prefill_bytes"].as_u64(), Some(kv_bytes(&per_layer(r))), "{label}");
        for key in ["vision", "llm_prefill", "prefill", "ttft", "kv_cache"] {
            assert!(r["ratio_to_unpruned"][key].as_f64().is_some(), "{label}: ratio_to_unpruned.{key}");
        }
        assert!(r["ratio_to_unpruned"]["kv_cache"].as_f64().unwrap() < 1.0, "{label}");
    }
}

#[test]
fn keep_ratios_and_image_sizes_are_refused_where_they_do_not_apply() {
    // A percentage on LLaVA is Nüwa's keep ratio: 25 % of 576 patches → budget 144 (K1 252, K2 36).
    let v = json_of(&["bench", "--preset", "tiny", "--budgets", "25%", "--flops-only", "--json"]);
    let r = &v["results"][1];
    assert_eq!((r["label"].as_str(), r["k1"].as_u64(), r["k2"].as_u64()), (Some("nuwa-25%"), Some(252), Some(36)));
    let err = fails(&["bench", "--preset", "tiny", "--flops-only", "--prune", "fastv", "--budgets", "25%"]);
    assert!(err.contains("--budgets") && err.contains("25%") && err.contains("fastv"), "{err}");
    let err = fails(&["bench", "--preset", "qwen2.5-vl-7b", "--flops-only", "--budgets", "64"]);
    assert!(err.contains("--budgets") && err.contains("keep ratio"), "{err}");
    let err = fails(&["bench", "--preset", "qwen2.5-vl-7b", "--flops-only", "--budgets", "30%"]);
    assert!(err.contains("30%") && err.contains("25%"), "{err}");
    let err = fails(&["bench", "--preset", "llava-1.5-7b", "--flops-only", "--image-size", "1000x750"]);
    assert!(err.contains("--image-size") && err.contains("Qwen2.5-VL"), "{err}");
    let out = nuwa(&["bench", "--preset", "qwen2.5-vl-7b", "--flops-only", "--image-size", "1000"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--image-size"));
}
