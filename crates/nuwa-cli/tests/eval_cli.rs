//! `nuwa eval` and `nuwa eval merge` end to end on the tiny fixture: the output files and table, shards
//! merged into the single run's summary, and flag or data errors (exit status 1, a message naming the
//! flag or row). The library's tests cover scoring, resume and the Parquet layouts.
#[path = "../../nuwa/tests/common/scratch.rs"]
mod scratch;

use scratch::Scratch;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

fn nuwa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nuwa")).args(args).output().expect("run nuwa")
}

/// Three yes/no rows on the fixture image.
fn manifest(dir: &Path, extra: &[String]) -> PathBuf {
    std::fs::copy(fixture("tiny-llava-1.5/image.png"), dir.join("image.png")).unwrap();
    let mut lines = vec![
        json!({"id": "q1", "image": "image.png", "question": "Is there a cat?", "answer": "yes"}).to_string(),
        json!({"id": "q2", "image": "image.png", "question": "Is there a car?", "answer": "no"}).to_string(),
        json!({"id": "q3", "image": "image.png", "question": "Is it daytime?", "answer": "yes"}).to_string(),
    ];
    lines.extend_from_slice(extra);
    let path = dir.join("pope.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn eval(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = fixture("tiny-llava-1.5");
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--task",
        "yesno",
        "--prune",
        "none,nuwa",
        "--budgets",
        "64",
        "--max-new-tokens",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    nuwa(&args)
}

fn without_timings(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("timings").expect("a timings key");
    v
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn eval_writes_outputs_and_shards_merge_to_the_single_run() {
    let dir = Scratch::new("cli-eval-run");
    let data = manifest(&dir, &[]);
    let single = dir.join("single");
    let out = eval(&data, &single, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    // (random weights score 0, so only the unpruned row has a retention: 100 % by definition)
    for word in ["config", "f1", "retention", "none", "nuwa@64", "100.00%"] {
        assert!(table.contains(word), "{word} missing from\n{table}");
    }
    let predictions = std::fs::read_to_string(single.join("predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 6, "3 samples × 2 configurations");
    for f in ["run.json", "errors.jsonl", "summary.json"] {
        assert!(single.join(f).exists(), "{f}");
    }
    let summary = read_json(&single.join("summary.json"));
    assert_eq!(summary["n_samples"], 3);
    assert_eq!(summary["configs"][0]["retention_pct"], 100.0);

    // Resumed: nothing left to do, same summary.
    let again = eval(&data, &single, &["--resume"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 answers to compute, 6 already done"));
    assert_eq!(without_timings(read_json(&single.join("summary.json"))), without_timings(summary.clone()));

    let shards: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("shard{i}"))).collect();
    for (i, d) in shards.iter().enumerate() {
        let o = eval(&data, d, &["--shard", &format!("{i}/2")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let merged = dir.join("merged");
    let o = nuwa(&[
        "eval",
        "merge",
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: Value = serde_json::from_slice(&o.stdout).expect("--json prints the summary");
    assert_eq!(without_timings(printed), without_timings(summary.clone()));
    assert_eq!(without_timings(read_json(&merged.join("summary.json"))), without_timings(summary));
}

#[test]
fn eval_errors_name_the_flag_or_the_row() {
    let dir = Scratch::new("cli-eval-errors");
    let data = manifest(&dir, &["{\"image\": \"image.png\", \"question\": ".into()]);
    let model = fixture("tiny-llava-1.5");
    for (args, needle) in [
        (vec!["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", "x"], "--task"),
        (vec!["eval", "--task", "vqa", "--data", data.to_str().unwrap(), "--out", "x"], "--model"),
    ] {
        let o = nuwa(&args);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{needle}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for (extra, needle) in [
        (vec!["--shard", "2/2"], "--shard"),
        (vec!["--prune", "none,magic"], "magic"),
        (vec!["--limit", "0"], "--limit"),
    ] {
        let o = eval(&data, &dir.join("bad"), &extra);
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{needle}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // A malformed line: reported and skipped by default …
    let skip = dir.join("skip");
    let o = eval(&data, &skip, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("row 4: "), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pope.jsonl line 4"));
    // … or the end of the run with --on-error fail, the answers before it kept.
    let fail = dir.join("fail");
    let o = eval(&data, &fail, &["--on-error", "fail"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("row 4") && err.contains("--resume"), "{err}");
    assert_eq!(std::fs::read_to_string(fail.join("predictions.jsonl")).unwrap().lines().count(), 6);
}
