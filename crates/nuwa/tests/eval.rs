//! `nuwa::eval` on generated datasets with the tiny fixture model: deterministic runs, resume after an
//! interruption, shards merged into the single run's summary, unusable rows under skip and fail, the
//! Parquet layouts of the lmms-eval datasets; and the VQA, yes/no and multiple-choice scorers on
//! hand-computed cases (REC through the harness fixture).
mod common;

use image::{ImageFormat, Rgb, RgbImage};
use nuwa::eval::data::{Dataset, ImageReader, Truth};
use nuwa::eval::{self, EvalConfig, Event, OnError, Prediction, RecBoxes, RunOptions, Settings, Shard, Task};
use nuwa::preprocess::Geometry;
use nuwa::score::{choice, rec, vqa, yesno};
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------------
// helpers

/// A fresh, empty folder for one test (per process: the suite may run twice at once on a shared
/// target folder); removed when the test passes.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn tmp(name: &str) -> TmpDir {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("eval-tests-{}", std::process::id())).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TmpDir(dir)
}

/// A picture with some structure (a gradient and a bright rectangle), `w`×`h`.
fn picture(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let inside = x > w / 4 && x < w / 2 && y > h / 3 && y < 2 * h / 3;
        if inside {
            Rgb([250, 30u8.wrapping_add(seed), 40])
        } else {
            Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, seed.wrapping_mul(37)])
        }
    })
}

fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Five rows, six samples (row 2 holds two expressions), on landscape, portrait and square images.
fn rec_manifest(dir: &Path) -> PathBuf {
    for (i, (w, h)) in [(64, 48), (40, 72), (50, 50), (90, 30)].into_iter().enumerate() {
        picture(w, h, i as u8).save(dir.join(format!("img{i}.png"))).unwrap();
    }
    let path = dir.join("rec.jsonl");
    write_lines(
        &path,
        &[
            json!({"id": "a", "image": "img0.png", "expression": "the red square", "bbox": [16, 16, 16, 16]})
                .to_string(),
            json!({"image": "img1.png", "expression": ["top half", "the blue thing"], "bbox": [0, 0, 40, 36]})
                .to_string(),
            json!({"id": 7, "image": "img2.png", "expression": "center", "bbox": [10, 10, 30, 30]}).to_string(),
            json!({"image": "img3.png", "expression": "right part", "bbox": [45, 0, 45, 30]}).to_string(),
            json!({"image": "img0.png", "expression": "again", "bbox": [1, 1, 2, 2]}).to_string(),
        ],
    );
    path
}

fn configs(names: &[&str]) -> Vec<EvalConfig> {
    names.iter().map(|n| EvalConfig::parse(n, 0).unwrap()).collect()
}

fn options(task: Task, data: &Path, out: &Path, names: &[&str]) -> RunOptions {
    RunOptions {
        task,
        model: "tiny-llava-1.5".into(),
        data: vec![data.to_path_buf()],
        configs: configs(names),
        max_new_tokens: Some(2),
        rec_boxes: RecBoxes::Padded,
        seed: 0,
        out: out.to_path_buf(),
        limit: None,
        shard: None,
        resume: false,
        on_error: OnError::Skip,
    }
}

fn quiet(_: Event<'_>) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn run(opts: &RunOptions) -> eval::RunReport {
    eval::run(common::engine(), opts, &mut quiet).unwrap()
}

/// Predictions without their run-dependent part, in (row, sample, configuration) order.
fn predictions(dir: &Path) -> Vec<Prediction> {
    let mut p = eval::read_predictions(&dir.join(eval::PREDICTIONS_FILE)).unwrap();
    for x in &mut p {
        x.timings = Default::default();
    }
    p.sort_by(|a, b| (a.row, a.sub, &a.config).cmp(&(b.row, b.sub, &b.config)));
    p
}

/// summary.json without `timings`.
fn summary(dir: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(eval::SUMMARY_FILE)).unwrap()).unwrap();
    let t = v.as_object_mut().unwrap().remove("timings");
    assert!(t.is_some_and(|t| t.is_object()), "summary.json has a timings object");
    v
}

const THREE: [&str; 3] = ["none", "nuwa@64", "nuwa@192"];

// ---------------------------------------------------------------------------------------------------
// runs

#[test]
fn fixture_model_run_is_deterministic_and_complete() {
    let dir = tmp("deterministic");
    let data = rec_manifest(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let ra = run(&options(Task::Rec, &data, &a, &THREE));
    let rb = run(&options(Task::Rec, &data, &b, &THREE));
    assert_eq!((ra.ran, ra.already_done, ra.errors.len()), (18, 0, 0));
    assert_eq!(rb.ran, 18);
    let (pa, pb) = (predictions(&a), predictions(&b));
    assert_eq!(pa.len(), 18, "6 samples × 3 configurations");
    assert_eq!(pa, pb, "same answers and scores in both runs");
    assert_eq!(summary(&a), summary(&b));
    // The same file bytes apart from timings, line for line.
    let strip = |d: &Path| -> Vec<Value> {
        std::fs::read_to_string(d.join(eval::PREDICTIONS_FILE))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("timings").expect("timings per line");
                v
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));

    let s = summary(&a);
    assert_eq!(s["task"], "rec");
    assert_eq!(s["headline"], "acc@0.5");
    assert_eq!(s["n_samples"], 6);
    let names: Vec<&str> = s["configs"].as_array().unwrap().iter().map(|c| c["config"].as_str().unwrap()).collect();
    assert_eq!(names, THREE);
    for c in s["configs"].as_array().unwrap() {
        assert_eq!(c["n"], 6);
        assert!(c["metrics"]["acc@0.5"].is_number() && c["metrics"]["iou"].is_number());
    }
    assert_eq!(s["configs"][1]["budget"], 64);
    assert_eq!(s["configs"][1]["avg_vision_tokens"], 64.0);
    assert_eq!(s["configs"][0]["avg_vision_tokens"], 576.0);

    // Each line carries the REC fields; ground truth normalised with the image's own size.
    let first = &pa[0];
    assert_eq!((first.id.as_str(), first.row, first.sub, first.config.as_str()), ("a", 1, 0, "none"));
    assert_eq!(first.image_size, Some([64, 48]));
    assert_eq!(first.gt_box, Some(rec::gt_box_from_coco([16.0, 16.0, 16.0, 16.0], 64.0, 48.0)));
    assert_eq!(first.prompt, format!("{}the red square", rec::PROMPT_PREFIX));
    assert!(first.iou.is_some() && first.acc.is_some() && first.center.is_some());
    assert_eq!(pa.iter().filter(|p| p.row == 2).map(|p| p.sub).max(), Some(1), "row 2 holds two samples");
    assert_eq!(pa.iter().find(|p| p.row == 3).unwrap().id, "7");
    assert_eq!(pa.iter().find(|p| p.row == 4).unwrap().id, "4", "no id: the row number");

    // The text table names every configuration.
    let parsed: eval::Summary =
        serde_json::from_str(&std::fs::read_to_string(a.join(eval::SUMMARY_FILE)).unwrap()).unwrap();
    let table = eval::format_table(&parsed);
    for n in THREE {
        assert!(table.contains(n), "{table}");
    }
}

#[test]
fn resume_after_an_interrupted_run_redoes_nothing() {
    let dir = tmp("resume");
    let data = rec_manifest(&dir);
    let full = dir.join("full");
    run(&options(Task::Rec, &data, &full, &THREE));

    let part = dir.join("part");
    let opts = options(Task::Rec, &data, &part, &THREE);
    // Stop after 7 answers, as an interruption would …
    let mut answered = 0;
    let report = eval::run(common::engine(), &opts, &mut |e| {
        if matches!(e, Event::Answered { .. }) {
            answered += 1;
            if answered == 7 {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(report.interrupted);
    assert_eq!(report.ran, 7);
    assert!(!part.join(eval::SUMMARY_FILE).exists(), "no summary for an unfinished run");
    // … and a kill in the middle of writing the 8th line.
    let pred_path = part.join(eval::PREDICTIONS_FILE);
    let before = std::fs::read_to_string(&pred_path).unwrap();
    assert_eq!(before.lines().count(), 7);
    std::fs::write(&pred_path, format!("{before}{{\"id\":\"a\",\"row\":1,\"sub\":0,\"conf")).unwrap();

    // Without --resume the folder is refused rather than overwritten.
    let err = eval::run(common::engine(), &opts, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("`resume`"), "{err}");

    let mut again = opts.clone();
    again.resume = true;
    let mut seen = Vec::new();
    let report = eval::run(common::engine(), &again, &mut |e| {
        if let Event::Answered { row, config } = e {
            seen.push((row, config.to_owned()));
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!((report.ran, report.already_done), (11, 7), "only what was missing");
    let done_before: Vec<(usize, String)> =
        before.lines().map(|l| serde_json::from_str::<Prediction>(l).unwrap()).map(|p| (p.row, p.config)).collect();
    for s in &seen {
        assert!(!done_before.contains(s), "{s:?} was done before the interruption");
    }
    let after = std::fs::read_to_string(&pred_path).unwrap();
    assert!(after.starts_with(&before), "lines written before the interruption are kept as they were");
    assert_eq!(after.lines().count(), 18);
    assert_eq!(predictions(&part), predictions(&full));
    assert_eq!(summary(&part), summary(&full));

    // A finished run resumed does nothing.
    let report = run(&again);
    assert_eq!((report.ran, report.already_done), (0, 18));
    assert_eq!(summary(&part), summary(&full));

    // Different settings are refused.
    let mut other = again.clone();
    other.max_new_tokens = Some(5);
    let err = eval::run(common::engine(), &other, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("max_new_tokens"), "{err}");

    // So is data that changed under the run: row 1 now asks something else.
    let text = std::fs::read_to_string(&data).unwrap().replace("the red square", "the green square");
    std::fs::write(&data, text).unwrap();
    let err = eval::run(common::engine(), &again, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("row 1 changed"), "{err}");
}

#[test]
fn resume_refuses_answers_whose_row_or_image_changed() {
    let dir = tmp("changed");
    let data = rec_manifest(&dir);
    let out = dir.join("out");
    let mut opts = options(Task::Rec, &data, &out, &["none", "nuwa@64"]);
    run(&opts);
    opts.resume = true;
    let resumed = |opts: &RunOptions| eval::run(common::engine(), opts, &mut quiet).map(|r| r.ran);
    assert_eq!(resumed(&opts).unwrap(), 0);
    let original = std::fs::read_to_string(&data).unwrap();

    // Row 3's box moved; its question did not.
    std::fs::write(&data, original.replace("[10,10,30,30]", "[10,10,20,20]")).unwrap();
    let err = resumed(&opts).unwrap_err().to_string();
    assert!(err.contains("row 3 changed") && err.contains("`resume`"), "{err}");
    std::fs::write(&data, &original).unwrap();
    assert_eq!(resumed(&opts).unwrap(), 0, "the data as it was resumes");

    // Row 4's image file now holds other pixels under the same name.
    let img3 = dir.join("img3.png");
    let before = std::fs::read(&img3).unwrap();
    picture(90, 30, 99).save(&img3).unwrap();
    let err = resumed(&opts).unwrap_err().to_string();
    assert!(err.contains("row 4 changed"), "{err}");
    std::fs::remove_file(&img3).unwrap();
    let err = resumed(&opts).unwrap_err().to_string();
    assert!(err.contains("row 4 lost its image") && err.contains("img3.png"), "{err}");
    std::fs::write(&img3, before).unwrap();
    assert_eq!(resumed(&opts).unwrap(), 0);

    // A configuration added later is computed; the earlier answers stay as they were.
    let mut more = opts.clone();
    more.configs = configs(&["none", "nuwa@64", "nuwa@192"]);
    assert_eq!(resumed(&more).unwrap(), 6);
}

/// Six rows of which three are unusable in ways only the bytes or the image show: a line that is not
/// UTF-8, a box reaching past the image, a box whose corner overflows.
fn subtle_manifest(dir: &Path) -> PathBuf {
    picture(32, 24, 1).save(dir.join("ok.png")).unwrap();
    let path = dir.join("subtle.jsonl");
    let line = |v: Value| v.to_string().into_bytes();
    let mut bytes = Vec::new();
    for l in [
        line(json!({"image": "ok.png", "expression": "first", "bbox": [0, 0, 10, 10]})),
        b"{\"image\": \"ok.png\", \"expression\": \"caf\xe9\", \"bbox\": [0, 0, 4, 4]}".to_vec(),
        line(json!({"image": "ok.png", "expression": "off the edge", "bbox": [20, 0, 20, 10]})),
        // Within a pixel of the edges: annotation rounding, accepted.
        line(json!({"image": "ok.png", "expression": "all of it", "bbox": [-0.5, 0, 32.5, 24.4]})),
        line(json!({"image": "ok.png", "expression": "huge", "bbox": [1e308, 2, 1e308, 4]})),
        line(json!({"image": "ok.png", "expression": "last", "bbox": [5, 5, 10, 10]})),
    ] {
        bytes.extend(l);
        bytes.push(b'\n');
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn rows_wrong_in_bytes_or_against_their_image_are_row_errors_and_the_folder_stays_usable() {
    let dir = tmp("subtle");
    let data = subtle_manifest(&dir);
    let names = ["none", "nuwa@64"];
    let clean = dir.join("clean");
    let report = run(&options(Task::Rec, &data, &clean, &names));
    assert_eq!(report.ran, 6, "rows 1, 4 and 6 under both configurations");
    let errors: Vec<(usize, String)> = report.errors.iter().map(|e| (e.row, e.message.clone())).collect();
    assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 3, 5], "{errors:?}");
    assert!(errors[0].1.contains("subtle.jsonl line 2") && errors[0].1.contains("not valid UTF-8"), "{errors:?}");
    assert!(errors[1].1.contains("line 3") && errors[1].1.contains("outside the 32×24 image"), "{errors:?}");
    assert!(errors[2].1.contains("line 5") && errors[2].1.contains("overflows"), "{errors:?}");
    let text = std::fs::read_to_string(clean.join(eval::PREDICTIONS_FILE)).unwrap();
    assert!(!text.contains("null") && !text.contains('\u{fffd}'), "nothing non-finite or replaced on file");

    // Interrupted after one answer, then resumed: the clean run's summary.
    let part = dir.join("part");
    let opts = options(Task::Rec, &data, &part, &names);
    let r = eval::run(common::engine(), &opts, &mut |e| {
        if matches!(e, Event::Answered { .. }) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(r.interrupted && r.ran == 1);
    let mut again = opts.clone();
    again.resume = true;
    assert_eq!(run(&again).ran, 5);
    assert_eq!(summary(&part), summary(&clean));
    assert_eq!(predictions(&part), predictions(&clean));

    // Two shards merged: the clean run's summary too.
    let shards: Vec<PathBuf> = (0..2)
        .map(|i| {
            let d = dir.join(format!("shard{i}"));
            let mut o = options(Task::Rec, &data, &d, &names);
            o.shard = Some(Shard { index: i, count: 2 });
            run(&o);
            d
        })
        .collect();
    let merged = dir.join("merged");
    let report = eval::merge(&shards, &merged).unwrap();
    assert_eq!((report.missing_answers, report.unfinished.len()), (Some(0), 0));
    assert_eq!(summary(&merged), summary(&clean));
    // And the merged folder resumes as a finished run.
    let mut on_merged = options(Task::Rec, &data, &merged, &names);
    on_merged.resume = true;
    assert_eq!(run(&on_merged).ran, 0);
}

#[test]
fn merge_refuses_mismatched_inputs_and_reports_missing_work() {
    let dir = tmp("merge-checks");
    let data = rec_manifest(&dir);
    let shard = |name: &str, index: usize, count: usize, limit: Option<usize>| {
        let d = dir.join(name);
        let mut o = options(Task::Rec, &data, &d, &["none"]);
        o.shard = Some(Shard { index, count });
        o.limit = limit;
        run(&o);
        d
    };
    let s0 = shard("s0", 0, 2, None);
    let s1 = shard("s1", 1, 2, None);
    let refused = |dirs: &[PathBuf], out: &str| eval::merge(dirs, &dir.join(out)).unwrap_err().to_string();

    let other_split = shard("third", 1, 3, None);
    let err = refused(&[s0.clone(), other_split], "m1");
    assert!(err.contains("shard 1/3") && err.contains("same split"), "{err}");
    let other_limit = shard("limited", 1, 2, Some(3));
    let err = refused(&[s0.clone(), other_limit], "m2");
    assert!(err.contains("`limit`"), "{err}");
    let other_copy = shard("s0-again", 0, 2, None);
    let err = refused(&[s0.clone(), s0.clone()], "m3");
    assert!(err.contains("given twice"), "{err}");
    let err = refused(&[s0.clone(), other_copy.clone()], "m3b");
    assert!(err.contains("shard 0/2 is given twice"), "{err}");
    let whole = dir.join("whole");
    run(&options(Task::Rec, &data, &whole, &["none"]));
    let err = refused(&[s0.clone(), whole.clone()], "m4");
    assert!(err.contains("mixes shards"), "{err}");
    // Onto a folder that holds a run: refused, and that run is untouched.
    let before = std::fs::read(whole.join(eval::PREDICTIONS_FILE)).unwrap();
    let err = eval::merge(&[s0.clone(), s1.clone()], &whole).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");
    assert_eq!(std::fs::read(whole.join(eval::PREDICTIONS_FILE)).unwrap(), before);

    // A shard that stopped early: merged, and what is missing is counted.
    let stopped = dir.join("stopped");
    let mut o = options(Task::Rec, &data, &stopped, &["none"]);
    o.shard = Some(Shard { index: 1, count: 2 });
    eval::run(common::engine(), &o, &mut |e| {
        if matches!(e, Event::Answered { .. }) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    let report = eval::merge(&[s0.clone(), stopped.clone()], &dir.join("partial")).unwrap();
    assert_eq!(report.unfinished, std::slice::from_ref(&stopped));
    // Shard 1 holds rows 2 (two samples) and 4: one answered, two missing.
    assert_eq!(report.missing_answers, Some(2));
    let report = eval::merge(&[s0.clone(), s1.clone()], &dir.join("complete")).unwrap();
    assert_eq!((report.missing_answers, report.missing_shards.len()), (Some(0), 0));

    // A folder another process is writing into: neither merged nor run into.
    let lock = std::fs::File::create(s1.join(eval::LOCK_FILE)).unwrap();
    lock.try_lock().unwrap();
    let err = refused(&[s0.clone(), s1.clone()], "m5");
    assert!(err.contains("another nuwa process"), "{err}");
    let mut o = options(Task::Rec, &data, &s1, &["none"]);
    o.shard = Some(Shard { index: 1, count: 2 });
    o.resume = true;
    let err = eval::run(common::engine(), &o, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("another nuwa process"), "{err}");
    drop(lock);
    assert_eq!(run(&o).ran, 0, "free again once the other process is gone");
}

#[test]
fn shards_merged_equal_the_single_run() {
    let dir = tmp("shards");
    let data = rec_manifest(&dir);
    let single = dir.join("single");
    run(&options(Task::Rec, &data, &single, &THREE));
    let mut shard_dirs = Vec::new();
    for i in 0..2 {
        let d = dir.join(format!("shard{i}"));
        let mut o = options(Task::Rec, &data, &d, &THREE);
        o.shard = Some(Shard { index: i, count: 2 });
        let r = run(&o);
        assert!(r.ran > 0 && r.ran < 18, "each shard does part of the work");
        shard_dirs.push(d);
    }
    // Rows 1, 3, 5 in shard 0; rows 2, 4 in shard 1.
    let rows = |d: &Path| -> Vec<usize> {
        let mut r: Vec<usize> = predictions(d).iter().map(|p| p.row).collect();
        r.dedup();
        r
    };
    assert_eq!(rows(&shard_dirs[0]), [1, 3, 5]);
    assert_eq!(rows(&shard_dirs[1]), [2, 4]);

    let merged = dir.join("merged");
    let report = eval::merge(&shard_dirs, &merged).unwrap();
    assert!(report.missing_shards.is_empty());
    assert_eq!(report.predictions, 18);
    assert_eq!(summary(&merged), summary(&single), "merged shards give the single run's summary");
    assert_eq!(predictions(&merged), predictions(&single));
    // The shards' own summaries cover their part only.
    assert_ne!(summary(&shard_dirs[0]), summary(&single));

    // One shard alone: merged, with the other reported missing.
    let report = eval::merge(&shard_dirs[..1], &dir.join("half")).unwrap();
    assert_eq!(report.missing_shards, [1]);
    // The output cannot be one of the inputs.
    assert!(eval::merge(&shard_dirs, &shard_dirs[0]).is_err());
}

#[test]
fn limit_counts_samples_before_sharding() {
    let dir = tmp("limit");
    let data = rec_manifest(&dir);
    let mut o = options(Task::Rec, &data, &dir.join("out"), &["none"]);
    o.limit = Some(2);
    let r = run(&o);
    assert_eq!(r.ran, 2);
    let p = predictions(&dir.join("out"));
    assert_eq!(
        p.iter().map(|p| (p.row, p.sub)).collect::<Vec<_>>(),
        [(1, 0), (2, 0)],
        "row 2 cut after one expression"
    );
}

/// Rows 2–5 are unusable: invalid JSON, a missing field, an image that is not an image, a missing file.
fn broken_manifest(dir: &Path) -> PathBuf {
    picture(32, 24, 1).save(dir.join("ok.png")).unwrap();
    std::fs::write(dir.join("corrupt.png"), b"this is not a picture").unwrap();
    let path = dir.join("broken.jsonl");
    write_lines(
        &path,
        &[
            json!({"image": "ok.png", "expression": "first", "bbox": [0, 0, 10, 10]}).to_string(),
            "{\"image\": \"ok.png\", \"expression\": ".into(),
            json!({"image": "ok.png", "bbox": [0, 0, 10, 10]}).to_string(),
            json!({"image": "corrupt.png", "expression": "x", "bbox": [0, 0, 1, 1]}).to_string(),
            json!({"image": "nowhere.png", "expression": "x", "bbox": [0, 0, 1, 1]}).to_string(),
            json!({"image": "ok.png", "expression": "last", "bbox": [5, 5, 10, 10]}).to_string(),
        ],
    );
    path
}

#[test]
fn unusable_rows_are_reported_by_row_and_skipped() {
    let dir = tmp("skip");
    let data = broken_manifest(&dir);
    let out = dir.join("out");
    let mut reported = Vec::new();
    let report = eval::run(common::engine(), &options(Task::Rec, &data, &out, &["none", "nuwa@64"]), &mut |e| {
        if let Event::RowError { row, .. } = e {
            reported.push(row);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(reported, [2, 3, 4, 5]);
    assert_eq!(report.ran, 4, "rows 1 and 6 under both configurations");
    let s = summary(&out);
    let errors = s["errors"].as_array().unwrap();
    let msg = |i: usize| errors[i]["message"].as_str().unwrap().to_owned();
    assert_eq!(errors.iter().map(|e| e["row"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert!(msg(0).contains("broken.jsonl line 2") && msg(0).contains("not valid JSON"), "{}", msg(0));
    assert!(msg(1).contains("line 3") && msg(1).contains("`expression`"), "{}", msg(1));
    assert!(
        msg(2).contains("line 4") && msg(2).contains("corrupt.png") && msg(2).contains("unrecognised format"),
        "{}",
        msg(2)
    );
    assert!(msg(3).contains("line 5") && msg(3).contains("nowhere.png"), "{}", msg(3));
    assert_eq!(s["n_samples"], 2);
    let lines = std::fs::read_to_string(out.join(eval::ERRORS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 4);
}

#[test]
fn on_error_fail_stops_at_the_row_and_keeps_what_was_written() {
    let dir = tmp("fail");
    let data = broken_manifest(&dir);
    let out = dir.join("out");
    let mut opts = options(Task::Rec, &data, &out, &["none", "nuwa@64"]);
    opts.on_error = OnError::Fail;
    let err = eval::run(common::engine(), &opts, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("row 2") && err.contains("broken.jsonl line 2"), "{err}");
    // Row 1 was answered before the stop and stays; the error is on file.
    let p = predictions(&out);
    assert_eq!(p.iter().map(|p| (p.row, p.config.as_str())).collect::<Vec<_>>(), [(1, "none"), (1, "nuwa@64")]);
    let errors = eval::read_errors(&out.join(eval::ERRORS_FILE)).unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].row, 2);
    assert!(!out.join(eval::SUMMARY_FILE).exists());

    // Continue past the bad rows: row 1 is not answered again.
    opts.on_error = OnError::Skip;
    opts.resume = true;
    let report = run(&opts);
    assert_eq!((report.ran, report.already_done), (2, 2));
    assert_eq!(report.errors.len(), 4);
}

// ---------------------------------------------------------------------------------------------------
// Parquet (lmms-eval layouts)

mod pq {
    use super::*;
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    /// One leaf column: values with definition and repetition levels.
    pub enum Leaf {
        Bytes(Vec<ByteArray>, Vec<i16>, Option<Vec<i16>>),
        Double(Vec<f64>, Vec<i16>, Option<Vec<i16>>),
        Int64(Vec<i64>, Vec<i16>, Option<Vec<i16>>),
    }

    /// An optional top-level string column (`None` = null).
    pub fn opt_str(rows: &[Option<&str>]) -> Leaf {
        let values = rows.iter().flatten().map(|s| ByteArray::from(*s)).collect();
        Leaf::Bytes(values, rows.iter().map(|r| i16::from(r.is_some())).collect(), None)
    }

    /// A field of an optional struct (both levels optional), always present here unless `None`.
    pub fn struct_bytes(rows: &[Option<Vec<u8>>]) -> Leaf {
        let values = rows.iter().flatten().map(|b| ByteArray::from(b.clone())).collect();
        Leaf::Bytes(values, rows.iter().map(|r| if r.is_some() { 2 } else { 1 }).collect(), None)
    }

    /// An optional list of optional elements (3-level LIST): def 3 per element, 1 for an empty list.
    fn list_levels(lens: &[usize]) -> (Vec<i16>, Vec<i16>) {
        let (mut def, mut rep) = (Vec::new(), Vec::new());
        for &n in lens {
            if n == 0 {
                def.push(1);
                rep.push(0);
            }
            for k in 0..n {
                def.push(3);
                rep.push(i16::from(k > 0));
            }
        }
        (def, rep)
    }

    pub fn list_str(rows: &[Vec<&str>]) -> Leaf {
        let (def, rep) = list_levels(&rows.iter().map(Vec::len).collect::<Vec<_>>());
        Leaf::Bytes(rows.iter().flatten().map(|s| ByteArray::from(*s)).collect(), def, Some(rep))
    }

    pub fn list_f64(rows: &[Vec<f64>]) -> Leaf {
        let (def, rep) = list_levels(&rows.iter().map(Vec::len).collect::<Vec<_>>());
        Leaf::Double(rows.iter().flatten().copied().collect(), def, Some(rep))
    }

    pub fn opt_i64(rows: &[i64]) -> Leaf {
        Leaf::Int64(rows.to_vec(), vec![1; rows.len()], None)
    }

    /// Writes one row group, snappy-compressed as the hub's files are, leaves in schema order.
    pub fn write(path: &Path, schema: &str, leaves: Vec<Leaf>) {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        for leaf in leaves {
            let mut col = rg.next_column().unwrap().expect("a leaf per schema column");
            match leaf {
                Leaf::Bytes(v, d, r) => {
                    col.typed::<ByteArrayType>().write_batch(&v, Some(&d), r.as_deref()).unwrap();
                }
                Leaf::Double(v, d, r) => {
                    col.typed::<DoubleType>().write_batch(&v, Some(&d), r.as_deref()).unwrap();
                }
                Leaf::Int64(v, d, r) => {
                    col.typed::<Int64Type>().write_batch(&v, Some(&d), r.as_deref()).unwrap();
                }
            }
            col.close().unwrap();
        }
        assert!(rg.next_column().unwrap().is_none(), "every leaf written");
        rg.close().unwrap();
        w.close().unwrap();
    }

    /// `lmms-lab/RefCOCO` (and RefCOCO+, RefCOCOg): one row per referent, its expressions in `answer`.
    pub const REFCOCO: &str = "message schema {
        OPTIONAL BYTE_ARRAY question_id (STRING);
        OPTIONAL group image {
            OPTIONAL BYTE_ARRAY bytes;
            OPTIONAL BYTE_ARRAY path (STRING);
        }
        OPTIONAL BYTE_ARRAY question (STRING);
        OPTIONAL group answer (LIST) {
            REPEATED group list { OPTIONAL BYTE_ARRAY element (STRING); }
        }
        OPTIONAL group segmentation (LIST) {
            REPEATED group list { OPTIONAL DOUBLE element; }
        }
        OPTIONAL group bbox (LIST) {
            REPEATED group list { OPTIONAL DOUBLE element; }
        }
        OPTIONAL INT64 iscrowd;
        OPTIONAL BYTE_ARRAY file_name (STRING);
    }";

    /// `lmms-lab/POPE`.
    pub const POPE: &str = "message schema {
        OPTIONAL BYTE_ARRAY id (STRING);
        OPTIONAL BYTE_ARRAY question_id (STRING);
        OPTIONAL BYTE_ARRAY question (STRING);
        OPTIONAL BYTE_ARRAY answer (STRING);
        OPTIONAL BYTE_ARRAY image_source (STRING);
        OPTIONAL group image {
            OPTIONAL BYTE_ARRAY bytes;
            OPTIONAL BYTE_ARRAY path (STRING);
        }
        OPTIONAL BYTE_ARRAY category (STRING);
    }";
}

/// Three RefCOCO rows: two expressions, one expression, and an image cell that is not an image.
fn refcoco_parquet(path: &Path) {
    let images =
        [Some(png_bytes(&picture(60, 40, 3))), Some(png_bytes(&picture(30, 50, 4))), Some(b"garbage".to_vec())];
    pq::write(
        path,
        pq::REFCOCO,
        vec![
            pq::opt_str(&[Some("101"), Some("102"), Some("103")]),
            pq::struct_bytes(&images),
            pq::opt_str(&[Some("a.jpg"), Some("b.jpg"), Some("c.jpg")]),
            pq::opt_str(
                &[Some(
                    "Please carefully observe the area circled in the image and come up with a caption for the area.",
                ); 3],
            ),
            pq::list_str(&[vec!["man in red", "left guy"], vec!["dog"], vec!["tree"]]),
            pq::list_f64(&[vec![1.0, 2.0, 3.0, 4.0], vec![], vec![0.0; 6]]),
            pq::list_f64(&[vec![6.0, 4.0, 30.0, 20.0], vec![0.0, 25.0, 15.0, 25.0], vec![1.0, 1.0, 2.0, 2.0]]),
            pq::opt_i64(&[0, 0, 1]),
            pq::opt_str(&[Some("COCO_train2014_1.jpg"), Some("COCO_train2014_2.jpg"), Some("COCO_train2014_3.jpg")]),
        ],
    );
}

#[test]
fn parquet_refcoco_layout_is_read_as_the_harness_explodes_it() {
    let dir = tmp("parquet-refcoco");
    let path = dir.join("test-00000-of-00001.parquet");
    refcoco_parquet(&path);
    let data = Dataset::open(std::slice::from_ref(&path), Task::Rec).unwrap();
    assert_eq!(data.rows.len(), 3);
    let samples = data.rows[0].samples.as_ref().unwrap();
    assert_eq!(samples.len(), 2, "one sample per referring expression");
    assert_eq!((samples[0].id.as_str(), samples[0].sub, samples[1].sub), ("101", 0, 1));
    assert_eq!(samples[1].prompt, format!("{}left guy", rec::PROMPT_PREFIX));
    assert_eq!(samples[0].truth, Truth::Rec { expression: "man in red".into(), bbox: [6.0, 4.0, 30.0, 20.0] });
    let mut images = ImageReader::new();
    assert_eq!(images.load(&data, &data.rows[0]).unwrap().0.dimensions(), (60, 40));
    assert_eq!(images.load(&data, &data.rows[1]).unwrap().0.dimensions(), (30, 50));
    let err = images.load(&data, &data.rows[2]).unwrap_err();
    assert!(err.contains("test-00000-of-00001.parquet row 3"), "{err}");

    // End to end: four answers, the third row reported.
    let out = dir.join("out");
    let report = run(&options(Task::Rec, &path, &out, &["none"]));
    assert_eq!(report.ran, 3);
    assert_eq!(report.errors.iter().map(|e| e.row).collect::<Vec<_>>(), [3]);
    let p = predictions(&out);
    assert_eq!(p[0].gt_box, Some(rec::gt_box_from_coco([6.0, 4.0, 30.0, 20.0], 60.0, 40.0)));
    assert_eq!(p[2].image_size, Some([30, 50]));

    // Shards over a Parquet file merge into the same summary.
    let mut dirs = Vec::new();
    for i in 0..2 {
        let mut o = options(Task::Rec, &path, &dir.join(format!("s{i}")), &["none"]);
        o.shard = Some(Shard { index: i, count: 2 });
        run(&o);
        dirs.push(o.out);
    }
    eval::merge(&dirs, &dir.join("merged")).unwrap();
    assert_eq!(summary(&dir.join("merged")), summary(&out));
}

#[test]
fn parquet_pope_layout_and_missing_columns() {
    let dir = tmp("parquet-pope");
    let path = dir.join("pope.parquet");
    let img = png_bytes(&picture(40, 40, 9));
    pq::write(
        &path,
        pq::POPE,
        vec![
            pq::opt_str(&[Some("1"), Some("2")]),
            pq::opt_str(&[Some("q1"), Some("q2")]),
            pq::opt_str(&[Some("Is there a dog in the image?"), Some("Is there a car in the image?")]),
            pq::opt_str(&[Some("yes"), Some("no")]),
            pq::opt_str(&[Some("COCO_val2014_1.jpg"), Some("COCO_val2014_2.jpg")]),
            pq::struct_bytes(&[Some(img.clone()), Some(img)]),
            pq::opt_str(&[Some("x.jpg"), Some("y.jpg")]),
            pq::opt_str(&[Some("adversarial"), Some("random")]),
        ],
    );
    let data = Dataset::open(std::slice::from_ref(&path), Task::Yesno).unwrap();
    let s: Vec<_> = data.rows.iter().map(|r| r.samples.as_ref().unwrap()[0].clone()).collect();
    assert_eq!(s[0].truth, Truth::YesNo(yesno::YesNo::Yes));
    assert_eq!(s[1].truth, Truth::YesNo(yesno::YesNo::No));
    assert_eq!(s[0].id, "1");
    assert_eq!(s[0].prompt, "Is there a dog in the image?\nAnswer the question using a single word or phrase.");
    let report = run(&options(Task::Yesno, &path, &dir.join("out"), &["none"]));
    assert_eq!(report.ran, 2);
    let sm = summary(&dir.join("out"));
    assert_eq!(sm["headline"], "f1");
    for k in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
        assert!(sm["configs"][0]["metrics"][k].is_number(), "{k}");
    }

    // The same file cannot be a REC dataset: the error names the missing columns.
    let err = Dataset::open(std::slice::from_ref(&path), Task::Rec).err().unwrap().to_string();
    assert!(err.contains("pope.parquet") && err.contains("`bbox`"), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// manifests for every task

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn manifest_fields_for_each_task() {
    use nuwa::eval::data::samples_of;
    // vqa: VQAv2's answer objects, TextVQA's strings, GQA's single answer.
    let s = samples_of(
        Task::Vqa,
        &obj(json!({"question": "What color?", "answers": [{"answer": "red"}, {"answer": "Red"}]})),
        3,
    )
    .unwrap();
    assert_eq!(s[0].truth, Truth::Vqa { answers: vec!["red".into(), "Red".into()] });
    assert_eq!(s[0].id, "3");
    assert_eq!(s[0].prompt, "What color?\nAnswer the question using a single word or phrase.");
    let s = samples_of(Task::Vqa, &obj(json!({"question": "How many?", "answer": 2, "question_id": 55})), 1).unwrap();
    assert_eq!((s[0].truth.clone(), s[0].id.as_str()), (Truth::Vqa { answers: vec!["2".into()] }, "55"));
    assert!(samples_of(Task::Vqa, &obj(json!({"question": "Q"})), 1).unwrap_err().contains("`answers`"));

    // choice: a list with an index answer (ScienceQA) …
    let s = samples_of(
        Task::Choice,
        &obj(json!({"question": "Which is a mammal?", "choices": ["trout", "whale", "crow"], "answer": 1, "hint": "Animals."})),
        1,
    )
    .unwrap();
    assert_eq!(s[0].truth, Truth::Choice { answer: 'B', n_choices: 3 });
    assert_eq!(
        s[0].prompt,
        "Context: Animals.\nWhich is a mammal?\nA. trout\nB. whale\nC. crow\nAnswer with the option's letter from the given choices directly."
    );
    // … MMBench's option columns with a letter answer, or the answer's text.
    let s = samples_of(Task::Choice, &obj(json!({"question": "Q?", "A": "x", "B": "y", "C": null, "answer": "B"})), 1)
        .unwrap();
    assert_eq!(s[0].truth, Truth::Choice { answer: 'B', n_choices: 2 });
    assert_eq!(s[0].prompt, format!("Q?\nA. x\nB. y{}", choice::LETTER_SUFFIX));
    let s = samples_of(Task::Choice, &obj(json!({"question": "Q?", "choices": ["x", "y"], "answer": "y"})), 1).unwrap();
    assert_eq!(s[0].truth, Truth::Choice { answer: 'B', n_choices: 2 });
    let e =
        samples_of(Task::Choice, &obj(json!({"question": "Q?", "choices": ["x", "y"], "answer": "C"})), 1).unwrap_err();
    assert!(e.contains("`answer`"), "{e}");
    let e =
        samples_of(Task::Choice, &obj(json!({"question": "Q?", "choices": ["x", "y"], "answer": 2})), 1).unwrap_err();
    assert!(e.contains("out of range"), "{e}");

    // yesno
    let s = samples_of(Task::Yesno, &obj(json!({"question": "Is it?", "answer": " Yes "})), 1).unwrap();
    assert_eq!(s[0].truth, Truth::YesNo(yesno::YesNo::Yes));
    let e = samples_of(Task::Yesno, &obj(json!({"question": "Is it?", "answer": "maybe"})), 1).unwrap_err();
    assert!(e.contains("\"yes\" or \"no\""), "{e}");

    // rec
    let e = samples_of(Task::Rec, &obj(json!({"expression": "x", "bbox": [1, 2, 3]})), 1).unwrap_err();
    assert!(e.contains("`bbox`"), "{e}");
    let e = samples_of(Task::Rec, &obj(json!({"expression": "x", "bbox": [1, 2, -3, 4]})), 1).unwrap_err();
    assert!(e.contains("positive"), "{e}");
    let e = samples_of(Task::Rec, &obj(json!({"expression": "x", "bbox": [1, 2, 0, 4]})), 1).unwrap_err();
    assert!(e.contains("area"), "{e}");
    let e = samples_of(Task::Rec, &obj(json!({"expression": "x", "bbox": [1e308, 2, 1e308, 4]})), 1).unwrap_err();
    assert!(e.contains("overflows"), "{e}");
    // An answer box too long to be a number is unparsed, never an infinite box.
    let huge = format!("[0.1, 0.2, {}, 0.5]", "9".repeat(400));
    assert_eq!(nuwa::score::rec::parse_box(&huge), None);
}

// ---------------------------------------------------------------------------------------------------
// scorers

#[test]
fn vqa_normalisation_follows_the_evalai_processor() {
    for (raw, want) in [
        ("Two dogs.", "2 dogs"),
        ("The cat's toy", "cat 's toy"),
        ("yes, it is", "yes it is"),
        ("dont", "don't"),
        ("don't", "don't"),
        ("a-b", "b"),                     // '-' between letters becomes a space, then the article goes
        ("hello - world", "hello world"), // next to a space it is deleted
        ("3.5", "3.5"),                   // a period before a digit stays
        ("e.g. this", "eg this"),
        ("none", "0"),
        ("\tYES\n", "yes"),
        ("An apple!", "apple"),
        ("10,000", "10000"),
        ("(left)", "left"),
    ] {
        assert_eq!(vqa::normalize(raw), want, "{raw:?}");
    }
}

#[test]
fn vqa_soft_accuracy_hand_cases() {
    let ten = |k: usize| -> Vec<String> { (0..10).map(|i| if i < k { "2" } else { "3" }.to_string()).collect() };
    // Leave-one-out over the ten answers: min(1, matches among the other nine / 3), averaged.
    for (k, want) in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)] {
        let s = vqa::score_row("Two", &ten(k));
        assert_eq!(s.pred, "2");
        assert!((s.accuracy - want).abs() < 1e-12, "{k} matches: {} vs {want}", s.accuracy);
        assert_eq!(s.exact_match, k > 0);
    }
    // One reference answer: exact match after normalisation.
    assert_eq!(vqa::score_row("the Table.", &["table".into()]).accuracy, 1.0);
    assert_eq!(vqa::score_row("chair", &["table".into()]).accuracy, 0.0);
    let s = vqa::summarize(&[(1.0, true), (0.3, true), (0.0, false), (0.9, true)]);
    assert_eq!(s.n, 4);
    assert!((s.accuracy - 0.55).abs() < 1e-12);
    assert_eq!(s.exact_match, 0.75);
    assert_eq!(vqa::prompt("  What is it? "), "What is it?\nAnswer the question using a single word or phrase.");
}

#[test]
fn yesno_pope_metrics_hand_cases() {
    use yesno::YesNo::{No, Yes};
    let rows: Vec<_> = [(Yes, "Yes"), (Yes, "no"), (No, "yes"), (No, " No\n"), (Yes, "Yes."), (No, "maybe")]
        .into_iter()
        .map(|(t, r)| yesno::score_row(r, t))
        .collect();
    assert_eq!(rows.iter().map(|r| r.correct).collect::<Vec<_>>(), [true, false, false, true, false, false]);
    assert_eq!(rows[4].pred, "yes.");
    let s = yesno::summarize(&rows);
    // TP 1 (row 1), FP 1 (row 3), FN 1 (row 2); "Yes." and "maybe" are neither.
    assert_eq!(s.n, 6);
    assert!((s.accuracy - 2.0 / 6.0).abs() < 1e-15);
    assert_eq!((s.precision, s.recall, s.f1), (0.5, 0.5, 0.5));
    assert!((s.yes_ratio - 2.0 / 6.0).abs() < 1e-15);
    assert_eq!(s.unparsed, 2);
    // All "yes": precision 3/5 … computed by hand.
    let rows: Vec<_> = [Yes, Yes, Yes, No, No].into_iter().map(|t| yesno::score_row("yes", t)).collect();
    let s = yesno::summarize(&rows);
    assert_eq!((s.precision, s.recall), (0.6, 1.0));
    assert!((s.f1 - 0.75).abs() < 1e-15);
    assert_eq!(yesno::summarize(&[]).f1, 0.0);
}

#[test]
fn choice_letters_hand_cases() {
    for (resp, want) in [
        ("B", Some('B')),
        (" B. a whale", Some('B')),
        ("A.", Some('A')),
        ("b", Some('b')), // kept as is: never equals an option letter
        ("The answer is B", None),
        ("C)", None),
        ("", None),
    ] {
        assert_eq!(choice::parse_letter(resp), want, "{resp:?}");
    }
    let rows: Vec<_> = [("B", 'B'), ("B. whale", 'B'), ("b", 'B'), ("C", 'B'), ("whale", 'B')]
        .into_iter()
        .map(|(r, a)| choice::score_row(r, a))
        .collect();
    let s = choice::summarize(&rows);
    assert_eq!((s.n, s.accuracy, s.unparsed), (5, 0.4, 1));
    assert_eq!(
        choice::prompt("Q?", &["x".into(), "y".into()], None),
        "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."
    );
}

#[test]
fn rec_boxes_padded_as_the_harness_or_original() {
    // A 200×100 image pads to a 200×200 square with the picture at rows 50..150.
    let geometry = Geometry::padded_square(200, 100);
    let truth = Truth::Rec { expression: "x".into(), bbox: [50.0, 0.0, 100.0, 100.0] };
    let sample = nuwa::eval::data::Sample { sub: 0, id: "1".into(), prompt: "p".into(), truth: truth.clone() };
    let response = "[0.25, 0.25, 0.75, 0.75]";

    let mut p = Prediction::new(&sample, 1, "none", response);
    eval::score(&mut p, &truth, &geometry, RecBoxes::Padded);
    // As answered, against gt [0.25, 0, 0.75, 1]: IoU 0.25 / 0.5.
    assert_eq!(p.gt_box, Some([0.25, 0.0, 0.75, 1.0]));
    assert_eq!(p.pred_box, Some([0.25, 0.25, 0.75, 0.75]));
    assert_eq!(p.iou, Some(0.5));
    assert_eq!(p.acc, Some([true, true, true, false, false]));
    assert_eq!(p.center, Some(true));

    let mut p = Prediction::new(&sample, 1, "none", response);
    eval::score(&mut p, &truth, &geometry, RecBoxes::Original);
    // Mapped through the padding: exactly the ground truth.
    assert_eq!(p.scored_box, Some([0.25, 0.0, 0.75, 1.0]));
    assert_eq!(p.iou, Some(1.0));

    // Nothing parses: the harness's [0, 0, 0, 0].
    let mut p = Prediction::new(&sample, 1, "none", "no idea");
    eval::score(&mut p, &truth, &geometry, RecBoxes::Original);
    assert_eq!((p.pred_box, p.scored_box, p.iou), (None, Some([0.0; 4]), Some(0.0)));
}

fn settings(task: Task) -> Settings {
    Settings {
        task,
        model: "m".into(),
        data: vec!["d".into()],
        max_new_tokens: 16,
        rec_boxes: RecBoxes::Padded,
        seed: 0,
    }
}

#[test]
fn rec_summary_through_predictions_matches_the_harness_fixture() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("refcoco-scoring/rec_scoring.json")).unwrap(),
    )
    .unwrap();
    let dir = tmp("rec-fixture");
    let path = dir.join(eval::PREDICTIONS_FILE);
    let lines: Vec<String> = fx["rows"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let gt: [f64; 4] = serde_json::from_value(r["gt"].clone()).unwrap();
            let response = r["response"].as_str().unwrap();
            let s = rec::score_row(response, gt);
            let sample = nuwa::eval::data::Sample {
                sub: 0,
                id: i.to_string(),
                prompt: String::new(),
                truth: Truth::Rec { expression: String::new(), bbox: [0.0; 4] },
            };
            let mut p = Prediction::new(&sample, i + 1, "none", response);
            p.gt_box = Some(gt);
            p.pred_box = s.parsed;
            p.iou = Some(s.iou);
            p.acc = Some(s.acc);
            p.center = Some(s.center);
            serde_json::to_string(&p).unwrap()
        })
        .collect();
    write_lines(&path, &lines);
    let preds = eval::read_predictions(&path).unwrap();
    let s = eval::summarize(&settings(Task::Rec), &["none".into()], &preds, &[]);
    let m = &s.configs[0].metrics;
    let agg = &fx["aggregate"];
    for (ours, theirs) in [
        ("iou", "IoU"),
        ("acc@0.1", "ACC@0.1"),
        ("acc@0.3", "ACC@0.3"),
        ("acc@0.5", "ACC@0.5"),
        ("acc@0.7", "ACC@0.7"),
        ("acc@0.9", "ACC@0.9"),
        ("center", "Center_ACC"),
    ] {
        let (a, b) = (m[ours].as_f64().unwrap(), agg[theirs].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-12, "{ours}: {a} vs {b}");
    }
    assert_eq!(s.n_samples, 60);
    assert_eq!(s.configs[0].retention_pct, Some(100.0));
}

#[test]
fn retention_is_relative_to_the_unpruned_run() {
    let sample = |row: usize| nuwa::eval::data::Sample {
        sub: 0,
        id: row.to_string(),
        prompt: String::new(),
        truth: Truth::Vqa { answers: vec![] },
    };
    let pred = |row: usize, config: &str, acc: f64| {
        let mut p = Prediction::new(&sample(row), row, config, "");
        p.accuracy = Some(acc);
        p.exact_match = Some(acc > 0.0);
        p
    };
    let preds = vec![
        pred(1, "none", 1.0),
        pred(2, "none", 0.5),
        pred(1, "nuwa@64", 1.0),
        pred(2, "nuwa@64", 0.0),
        pred(1, "nuwa@128", 1.0),
        pred(2, "nuwa@128", 0.5),
    ];
    // Configurations in any order come out sorted: none, then budgets numerically.
    let configs = ["nuwa@128".to_string(), "nuwa@64".into(), "none".into(), "nuwa@192".into()];
    let s = eval::summarize(&settings(Task::Vqa), &configs, &preds, &[]);
    let names: Vec<&str> = s.configs.iter().map(|c| c.config.as_str()).collect();
    assert_eq!(names, ["none", "nuwa@64", "nuwa@128", "nuwa@192"]);
    let r: Vec<Option<f64>> = s.configs.iter().map(|c| c.retention_pct).collect();
    assert_eq!(r[0], Some(100.0));
    assert!((r[1].unwrap() - 0.5 / 0.75 * 100.0).abs() < 1e-12);
    assert_eq!(r[2], Some(100.0));
    assert_eq!(r[3], None, "nothing answered under nuwa@192");
    assert_eq!(s.configs[3].n, 0);
    assert_eq!(s.configs[0].metrics["accuracy"], json!(0.75));
    assert_eq!((s.configs[1].prune.as_str(), s.configs[1].budget), ("nuwa", Some(64)));

    // An unpruned score of 0: the unpruned run is still 100 %, the others have nothing to be relative to.
    let zero: Vec<Prediction> = preds
        .iter()
        .cloned()
        .map(|mut p| {
            p.accuracy = Some(0.0);
            p
        })
        .collect();
    let s = eval::summarize(&settings(Task::Vqa), &[], &zero, &[]);
    assert_eq!(s.configs.iter().map(|c| c.retention_pct).collect::<Vec<_>>(), [Some(100.0), None, None]);

    // Without an unpruned run there is nothing to be relative to.
    let s = eval::summarize(&settings(Task::Vqa), &[], &preds[2..], &[]);
    assert!(s.configs.iter().all(|c| c.retention_pct.is_none()));
}

#[test]
fn configuration_grid_and_shard_parsing() {
    use nuwa::prune::Budget::{Percent, Tokens};
    let g = EvalConfig::grid(&["nuwa".into(), "none".into()], &[Tokens(192), Tokens(64), Tokens(64)], 0).unwrap();
    assert_eq!(g.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["none", "nuwa@64", "nuwa@192"]);
    let side_by_side = EvalConfig::grid(
        &["none".into(), "nuwa".into(), "fastv".into(), "visionzip".into()],
        &[Tokens(64), Tokens(128)],
        0,
    )
    .unwrap();
    assert_eq!(
        side_by_side.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["none", "fastv@64", "fastv@128", "nuwa@64", "nuwa@128", "visionzip@64", "visionzip@128"]
    );
    assert!(EvalConfig::grid(&["magic".into()], &[Tokens(64)], 0).unwrap_err().to_string().contains("magic"));
    assert!(EvalConfig::grid(&["pdrop".into()], &[Tokens(100)], 0).is_err());
    assert!(EvalConfig::grid(&["nuwa".into()], &[Tokens(0)], 0).is_err());
    let manual = EvalConfig::grid(&["manual".into()], &[Tokens(64)], 0).unwrap_err();
    assert!(manual.field() == Some("prune") && manual.to_string().contains("generate"), "{manual}");
    // Keep ratios: Nüwa only, named with their percent sign, after the token budgets; names parse back.
    let ratios = EvalConfig::grid(&["nuwa".into()], &[Percent(75.0), Tokens(64), Percent(25.0)], 0).unwrap();
    assert_eq!(ratios.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["nuwa@64", "nuwa@25%", "nuwa@75%"]);
    assert_eq!(EvalConfig::parse("nuwa@25%", 0).unwrap(), ratios[1]);
    assert_eq!(EvalConfig::grid(&["fastv".into()], &[Percent(25.0)], 0).unwrap_err().field(), Some("budget"));
    assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { index: 1, count: 4 });
    for bad in ["4/4", "1", "a/b", "0/0"] {
        assert_eq!(bad.parse::<Shard>().unwrap_err().field(), Some("shard"), "{bad}");
    }
}
