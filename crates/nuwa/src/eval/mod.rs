//! Accuracy under pruning on a dataset: every sample × every pruning configuration, the image encoded
//! once per row and reduced once per configuration (exact reuse, see [`Engine::encode_vision`]), answers
//! scored as the standard harness does and summarised with the retention relative to the unpruned run.
//!
//! An output folder holds:
//! - `run.json`: the settings (task, model, data, max new tokens, …), the configurations, shard and limit;
//! - `predictions.jsonl`: one line per sample × configuration, appended and flushed as each answer is
//!   scored, so an interrupted run keeps everything it finished and resuming continues it;
//! - `errors.jsonl`: one line per unusable row (`row`, `message`) of the latest run;
//! - `summary.json`: computed from the two files above (so a run, a resumed run and a merge of shards
//!   give the same summary); anything run-dependent is under its `timings` key.
//!
//! Sharding splits by row (`(row − 1) mod N = i`), after the limit; [`merge`] combines shard folders.

pub mod data;

use crate::engine::Engine;
use crate::layout::Needs;
use crate::preprocess::Geometry;
use crate::prompt::PromptTokens;
use crate::prune::{Budget, Method, PruneSpec};
use crate::score::{choice, rec, vqa, yesno};
use crate::{Error, Fnv1a, Result, Sampling};
use data::{Dataset, Row, Sample, Truth};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const RUN_FILE: &str = "run.json";
pub const PREDICTIONS_FILE: &str = "predictions.jsonl";
pub const ERRORS_FILE: &str = "errors.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
/// Held (an advisory lock) by the process writing into a run folder.
pub const LOCK_FILE: &str = ".nuwa-eval.lock";

/// A folder's write lock: a second eval or a merge of a folder being written is refused. The kernel
/// releases it when the process ends, however it ends, so a crash leaves no stale lock behind.
struct FolderLock {
    /// Held, not read: closing it releases the lock.
    _file: std::fs::File,
}

impl FolderLock {
    fn take(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, format!("cannot open the folder's lock file: {e}")))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::io(
                dir,
                "another nuwa process is writing into this folder right now (it holds .nuwa-eval.lock): \
                 wait for it to finish, or choose another `out`",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, format!("cannot lock: {e}"))),
        }
    }
}

/// What is asked and how it is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Referring-expression grounding (RefCOCO family): a box, scored by IoU; headline Acc@0.5.
    Rec,
    /// Open-ended short answers (VQAv2, TextVQA, GQA): VQA soft accuracy.
    Vqa,
    /// Yes/no questions (POPE): accuracy, precision, recall; headline F1.
    Yesno,
    /// Multiple choice by letter (ScienceQA, MMBench): accuracy.
    Choice,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Rec => "rec",
            Task::Vqa => "vqa",
            Task::Yesno => "yesno",
            Task::Choice => "choice",
        }
    }

    /// The metric retention is computed on.
    pub fn headline(self) -> &'static str {
        match self {
            Task::Rec => "acc@0.5",
            Task::Vqa | Task::Choice => "accuracy",
            Task::Yesno => "f1",
        }
    }

    /// A box needs room; short answers do not.
    pub fn default_max_new_tokens(self) -> usize {
        match self {
            Task::Rec => 64,
            _ => 16,
        }
    }

    /// Summary metrics shown in the table, headline first.
    fn table_metrics(self) -> &'static [&'static str] {
        match self {
            Task::Rec => &["acc@0.5", "iou", "center"],
            Task::Vqa => &["accuracy", "exact_match"],
            Task::Yesno => &["f1", "accuracy", "precision", "recall", "yes_ratio"],
            Task::Choice => &["accuracy"],
        }
    }
}

/// Which frame a REC answer is scored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecBoxes {
    /// The parsed box as it is (normalised to the padded square the model saw; a pixel answer divided by
    /// its frame's size) against the ground truth normalised to the original image — what lmms-eval's
    /// `refcoco_bbox_rec` does, so numbers match published ones.
    #[default]
    Padded,
    /// The parsed box mapped from the padded square onto the original image (and clamped) first: the
    /// geometrically right comparison, higher on non-square images.
    Original,
}

/// What to do with a row that cannot be used (malformed, unreadable image, prompt too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Record it in `errors.jsonl` and the summary, go on.
    #[default]
    Skip,
    /// Record it and stop; everything written so far stays.
    Fail,
}

/// Part `index` of `count` (0-based): the rows with `(row − 1) mod count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("shard", format!("expects i/N with 0 ≤ i < N (e.g. 0/4), got {s:?}"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) =
            (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One pruning configuration: `none`, or a method at a budget (`nuwa@64`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    pub name: String,
    pub method: Method,
}

impl EvalConfig {
    /// `prune` with `budget` (ignored by `none`); every method takes its defaults otherwise.
    pub fn new(prune: &str, budget: Option<Budget>, seed: u64) -> Result<Self> {
        match (prune.trim(), budget) {
            ("none", _) => Ok(Self { name: "none".into(), method: Method::NONE }),
            ("manual", _) => Err(Error::invalid(
                "prune",
                "manual keeps a hand-picked list of one image's patches; evaluation runs budgeted methods \
                 (use generate or ground with a keep list)",
            )),
            (name, Some(budget)) => {
                Ok(Self { name: format!("{name}@{budget}"), method: PruneSpec::at(name, budget, seed).method()? })
            }
            (name, None) => Err(Error::invalid("budgets", format!("is empty: {name} needs at least one budget"))),
        }
    }

    /// A configuration from its name (`none`, `nuwa@64`).
    pub fn parse(name: &str, seed: u64) -> Result<Self> {
        match name.split_once('@') {
            None => Self::new(name, None, seed),
            Some((m, b)) => {
                let b = b.parse().map_err(|_| {
                    Error::invalid(
                        "configs",
                        format!("bad configuration name {name:?} (expected none or METHOD@BUDGET)"),
                    )
                })?;
                Self::new(m, Some(b), seed)
            }
        }
    }

    /// Every method × every budget (`none` once), sorted, without duplicates.
    pub fn grid(prune: &[String], budgets: &[Budget], seed: u64) -> Result<Vec<Self>> {
        if prune.is_empty() {
            return Err(Error::invalid("prune", "needs at least one method (none, nuwa, fastv, …)"));
        }
        let mut out = Vec::new();
        for p in prune {
            if p.trim() == "none" {
                out.push(Self::new("none", None, seed)?);
            } else {
                if budgets.is_empty() {
                    return Err(Error::invalid("budgets", format!("is empty: {p} needs at least one budget")));
                }
                for &b in budgets {
                    out.push(Self::new(p, Some(b), seed)?);
                }
            }
        }
        out.sort_by_key(|a| config_order(&a.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    pub fn budget(&self) -> Option<usize> {
        self.method.budget()
    }
}

/// Sort key of a configuration name: `none` first, then by method, token budgets before keep ratios,
/// each ascending.
fn config_order(name: &str) -> (u8, String, u8, u64) {
    let (method, budget) = match name.split_once('@') {
        Some((m, b)) => (m, b.parse::<Budget>().ok()),
        None => (name, None),
    };
    let (kind, value) = match budget {
        None if method == "none" => (0, 0),
        Some(Budget::Tokens(n)) => (0, n as u64),
        Some(Budget::Percent(p)) => (1, (p * 1e6) as u64),
        None => (2, 0),
    };
    (u8::from(method != "none"), method.to_owned(), kind, value)
}

/// A configuration name's method and token budget (`None` for `none` and keep ratios).
fn split_config(name: &str) -> (String, Option<usize>) {
    match name.split_once('@') {
        Some((m, b)) => (m.to_owned(), b.parse().ok()),
        None => (name.to_owned(), None),
    }
}

/// What decides the numbers; equal settings make runs (and shards) comparable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub task: Task,
    /// The model as given (a folder or hub id).
    pub model: String,
    /// The data files as given.
    pub data: Vec<String>,
    pub max_new_tokens: usize,
    pub rec_boxes: RecBoxes,
    pub seed: u64,
}

impl Settings {
    /// The first field that differs, as `name: a vs b`.
    fn difference(&self, other: &Settings) -> Option<String> {
        let a = serde_json::to_value(self).expect("plain data");
        let b = serde_json::to_value(other).expect("plain data");
        let (a, b) = (a.as_object().expect("struct"), b.as_object().expect("struct"));
        a.iter()
            .find(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v} vs {}", b.get(k).unwrap_or(&Value::Null)))
    }
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub settings: Settings,
    /// Every configuration run into this folder so far, sorted.
    pub configs: Vec<String>,
    pub shard: Option<Shard>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub task: Task,
    /// Recorded in the settings.
    pub model: String,
    pub data: Vec<PathBuf>,
    pub configs: Vec<EvalConfig>,
    /// `None`: the task's default (64 for rec, 16 otherwise).
    pub max_new_tokens: Option<usize>,
    pub rec_boxes: RecBoxes,
    pub seed: u64,
    pub out: PathBuf,
    /// Only the first `limit` samples of the dataset (before sharding).
    pub limit: Option<usize>,
    pub shard: Option<Shard>,
    pub resume: bool,
    pub on_error: OnError,
}

/// Progress reports; the callback may answer [`ControlFlow::Break`] to stop after the current answer
/// (as an interruption would, with everything so far kept).
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// `units` sample × configuration answers to compute; `done` already in the predictions file.
    Planned { units: usize, done: usize, samples: usize, rows: usize },
    /// One answer computed, scored and written.
    Answered { row: usize, config: &'a str },
    /// A row was recorded as unusable.
    RowError { row: usize, message: &'a str },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    pub row: usize,
    pub message: String,
}

#[derive(Debug)]
pub struct RunReport {
    /// Answers computed by this run.
    pub ran: usize,
    /// Answers found in the predictions file and not computed again.
    pub already_done: usize,
    pub errors: Vec<RowError>,
    /// Stopped early by the progress callback; no summary was written.
    pub interrupted: bool,
    pub summary: Option<Summary>,
}

/// The run-dependent part of one answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineTimings {
    pub vision_ms: f64,
    pub stage1_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms_per_token: f64,
}

/// One line of `predictions.jsonl`: one sample answered under one configuration, scored. Task fields
/// are present for their task only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub row: usize,
    pub sub: usize,
    pub config: String,
    pub prompt: String,
    /// Fingerprint of what the answer was computed from (the row as stored, the sample, its prompt and
    /// the image's bytes): resuming refuses answers whose row changed since.
    #[serde(default)]
    pub input_hash: String,
    pub response: String,
    pub tokens: usize,
    pub stop_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_vision_tokens: Option<f64>,
    // rec
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Ground truth as given: COCO `[x, y, w, h]` in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    /// Original image `[width, height]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[u32; 2]>,
    /// Ground truth normalised by the image's own size, `[x1, y1, x2, y2]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt_box: Option<[f64; 4]>,
    /// The box parsed from the response (padded-square frame), absent when none parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred_box: Option<[f64; 4]>,
    /// The box scored (`pred_box`, mapped to the original with [`RecBoxes::Original`]; `[0,0,0,0]`
    /// when nothing parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_box: Option<[f64; 4]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iou: Option<f64>,
    /// `iou >= t` for t in 0.1, 0.3, 0.5, 0.7, 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<[bool; 5]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center: Option<bool>,
    // vqa
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<bool>,
    // yesno, choice
    /// The right answer (`yes`/`no`, or the option letter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The response as scored: VQA-normalised (vqa), lower-cased (yesno), the picked letter (choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    pub timings: LineTimings,
}

impl Prediction {
    /// An unscored answer to `sample` under `config`, without timings.
    pub fn new(sample: &Sample, row: usize, config: &str, response: &str) -> Self {
        Self {
            id: sample.id.clone(),
            row,
            sub: sample.sub,
            config: config.to_owned(),
            prompt: sample.prompt.clone(),
            input_hash: String::new(),
            response: response.to_owned(),
            tokens: 0,
            stop_reason: String::new(),
            avg_vision_tokens: None,
            expression: None,
            bbox: None,
            image_size: None,
            gt_box: None,
            pred_box: None,
            scored_box: None,
            iou: None,
            acc: None,
            center: None,
            answers: None,
            accuracy: None,
            exact_match: None,
            answer: None,
            pred: None,
            correct: None,
            timings: LineTimings::default(),
        }
    }

    /// (row, sample, configuration): what identifies an answer across runs.
    pub fn key(&self) -> (usize, usize, String) {
        (self.row, self.sub, self.config.clone())
    }
}

/// Per configuration in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub config: String,
    pub prune: String,
    pub budget: Option<usize>,
    /// Samples answered.
    pub n: usize,
    pub metrics: BTreeMap<String, Value>,
    /// Headline metric in % of the unpruned run's (`none` = 100); null without a `none` run.
    pub retention_pct: Option<f64>,
    /// Mean vision tokens over the decoder's layers.
    pub avg_vision_tokens: Option<f64>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub task: Task,
    pub headline: String,
    pub settings: Settings,
    /// Distinct samples answered under at least one configuration.
    pub n_samples: usize,
    pub configs: Vec<ConfigSummary>,
    pub errors: Vec<RowError>,
    /// Run-dependent: mean timings per configuration, when it was written, the last run's wall time.
    pub timings: Value,
}

/// Runs every requested configuration over every selected sample not already in `opts.out`.
pub fn run(
    engine: &Engine,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
) -> Result<RunReport> {
    let t0 = Instant::now();
    let max_new_tokens = opts.max_new_tokens.unwrap_or(opts.task.default_max_new_tokens());
    if max_new_tokens == 0 {
        return Err(Error::invalid("max_new_tokens", "must be at least 1"));
    }
    if opts.configs.is_empty() {
        return Err(Error::invalid("prune", "leaves no configurations to run (give methods and `budgets`)"));
    }
    let settings = Settings {
        task: opts.task,
        model: opts.model.clone(),
        data: opts.data.iter().map(|p| p.display().to_string()).collect(),
        max_new_tokens,
        rec_boxes: opts.rec_boxes,
        seed: opts.seed,
    };
    // Read the data first: a bad file or flag leaves the output folder untouched.
    let mut data = Dataset::open(&opts.data, opts.task)?;
    data.ask_rec_as(|expression| engine.grounding_prompt(expression));
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, format!("cannot create the output folder: {e}")))?;
    let _lock = FolderLock::take(out)?;
    let (run_path, pred_path, err_path) = (out.join(RUN_FILE), out.join(PREDICTIONS_FILE), out.join(ERRORS_FILE));

    let mut run_configs = opts.configs.clone();
    run_configs.sort_by_key(|a| config_order(&a.name));
    run_configs.dedup_by(|a, b| a.name == b.name);
    let mut all_configs: BTreeSet<String> = run_configs.iter().map(|c| c.name.clone()).collect();
    // Answers already on file, with the fingerprint of what they answered (to notice data that changed since).
    let mut done: HashMap<(usize, usize, String), String> = HashMap::new();
    if holds_run(out) {
        if !opts.resume {
            return Err(Error::io(
                out,
                "already holds a run (run.json, predictions.jsonl): pass `resume` to continue it, or choose another `out`",
            ));
        }
        let prev = read_run_file(&run_path)?;
        if let Some(d) = prev.settings.difference(&settings) {
            return Err(Error::io(
                out,
                format!("cannot `resume`: this folder's run has different settings ({d}); use another `out`"),
            ));
        }
        if prev.shard != opts.shard {
            let show = |s: Option<Shard>| s.map_or("none".to_string(), |s| s.to_string());
            return Err(Error::io(
                out,
                format!(
                    "cannot `resume`: this folder holds shard {} but `shard` is {}",
                    show(prev.shard),
                    show(opts.shard)
                ),
            ));
        }
        all_configs.extend(prev.configs);
        repair_tail(&pred_path)?;
        done = read_predictions(&pred_path)?.into_iter().map(|p| (p.key(), p.input_hash)).collect();
    }
    let mut all_configs: Vec<String> = all_configs.into_iter().collect();
    all_configs.sort_by_key(|c| config_order(c));
    let run_file =
        RunFile { settings: settings.clone(), configs: all_configs.clone(), shard: opts.shard, limit: opts.limit };
    write_json(&run_path, &run_file)?;
    // A summary describes a finished run; this one is not finished yet.
    let _ = std::fs::remove_file(out.join(SUMMARY_FILE));

    let selected = select(&data, opts.limit, opts.shard);
    if !done.is_empty() {
        check_answers_current(&data, &selected, &done, &all_configs, &pred_path)?;
    }
    let is_done = |row: usize, s: &Sample, c: &EvalConfig| done.contains_key(&(row, s.sub, c.name.clone()));
    let (mut units, mut already_done, mut n_samples) = (0, 0, 0);
    for (row, take) in &selected {
        if let Ok(samples) = &row.samples {
            for s in &samples[..*take] {
                n_samples += 1;
                for c in &run_configs {
                    if is_done(row.row, s, c) {
                        already_done += 1;
                    } else {
                        units += 1;
                    }
                }
            }
        }
    }
    let mut report = RunReport { ran: 0, already_done, errors: Vec::new(), interrupted: false, summary: None };
    if on_event(Event::Planned { units, done: already_done, samples: n_samples, rows: selected.len() }).is_break() {
        report.interrupted = true;
        return Ok(report);
    }

    let mut predictions = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&pred_path)
        .map_err(|e| Error::io(&pred_path, format!("cannot open for appending: {e}")))?;
    let mut errors =
        std::fs::File::create(&err_path).map_err(|e| Error::io(&err_path, format!("cannot create: {e}")))?;
    let needs = run_configs.iter().fold(Needs::default(), |n, c| n.union(c.method.needs()));
    engine.tokenizer()?;
    let mut images = data::ImageReader::new();
    let sampling = Sampling::default();

    'rows: for (row, take) in &selected {
        let samples = match &row.samples {
            Ok(s) => &s[..*take],
            Err(msg) => {
                record_error(opts, &mut errors, &err_path, &pred_path, &mut report, on_event, row.row, msg.clone())?;
                continue;
            }
        };
        let todo: Vec<Vec<bool>> =
            run_configs.iter().map(|c| samples.iter().map(|s| !is_done(row.row, s, c)).collect()).collect();
        if !todo.iter().flatten().any(|&t| t) {
            continue;
        }
        let at = data.locate(row);
        // Everything that makes this row unusable, as a message; engine failures stay errors.
        let prepared = (|| -> Result<std::result::Result<Prepared, String>> {
            let (img, image_hash) = match images.load(&data, row) {
                Ok(loaded) => loaded,
                Err(m) => return Ok(Err(m)),
            };
            if let Err(m) = data::fits_image(samples, img.width(), img.height()) {
                return Ok(Err(format!("{at}: {m}")));
            }
            let mut prompts = Vec::with_capacity(samples.len());
            for (i, s) in samples.iter().enumerate() {
                if !todo.iter().any(|t| t[i]) {
                    prompts.push(None);
                    continue;
                }
                match engine.prompt(&s.prompt, true) {
                    Ok(p) => prompts.push(Some(p)),
                    Err(e) if is_row_error(&e) => {
                        return Ok(Err(format!("{at}: {}", with_sub(&e.to_string(), s, samples.len()))))
                    }
                    Err(e) => return Err(e),
                }
            }
            let (pixels, geometry) = engine.pixels(&img)?;
            let mut features = engine.encode_vision(&pixels, Some((geometry.width, geometry.height)), needs)?;
            features.geometry = Some(geometry);
            Ok(Ok((features, geometry, prompts, image_hash)))
        })()?;
        let (features, geometry, prompts, image_hash) = match prepared {
            Ok(p) => p,
            Err(msg) => {
                record_error(opts, &mut errors, &err_path, &pred_path, &mut report, on_event, row.row, msg)?;
                continue;
            }
        };
        for (ci, config) in run_configs.iter().enumerate() {
            if !todo[ci].iter().any(|&t| t) {
                continue;
            }
            let encoded = engine.reduce(&features, &config.method)?;
            for (si, sample) in samples.iter().enumerate() {
                if !todo[ci][si] {
                    continue;
                }
                let prompt = prompts[si].as_ref().expect("tokenised above");
                let answer = engine
                    .prefill_encoded(prompt, Some(encoded.clone()), &config.method)
                    .and_then(|state| engine.generate_from(state, &sampling, max_new_tokens, &mut |_| {}));
                let generation = match answer {
                    Ok(g) => g,
                    Err(e @ Error::ContextOverflow { .. }) => {
                        let msg =
                            format!("{at}: {} ({})", with_sub(&e.to_string(), sample, samples.len()), config.name);
                        record_error(opts, &mut errors, &err_path, &pred_path, &mut report, on_event, row.row, msg)?;
                        continue 'rows;
                    }
                    Err(e) => return Err(e),
                };
                let t = &generation.timings;
                let mut p = Prediction::new(sample, row.row, &config.name, &generation.text);
                p.input_hash = input_hash(row, sample, image_hash);
                p.tokens = generation.tokens.len();
                p.stop_reason = generation.stop_reason.to_string();
                p.avg_vision_tokens = generation.vision.as_ref().map(|v| v.avg_vision_tokens);
                p.timings = LineTimings {
                    vision_ms: t.vision_ms,
                    stage1_ms: t.stage1_ms,
                    prefill_ms: t.prefill_ms,
                    decode_ms_per_token: t.decode_ms_per_token,
                };
                score(&mut p, &sample.truth, &geometry, opts.rec_boxes);
                append_line(&mut predictions, &pred_path, &p)?;
                report.ran += 1;
                if on_event(Event::Answered { row: row.row, config: &config.name }).is_break() {
                    report.interrupted = true;
                    return Ok(report);
                }
            }
        }
    }
    drop(predictions);
    let preds = read_predictions(&pred_path)?;
    let errs = read_errors(&err_path)?;
    let mut summary = summarize(&settings, &all_configs, &preds, &errs);
    if let Value::Object(t) = &mut summary.timings {
        t.insert(
            "run".into(),
            json!({ "wall_s": t0.elapsed().as_secs_f64(), "answers": report.ran, "shard": opts.shard }),
        );
    }
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    report.summary = Some(summary);
    Ok(report)
}

/// A row ready to answer: its vision features, geometry, tokenised prompts (`None` where nothing is left
/// to do) and the fingerprint of its image.
type Prepared = (crate::layout::VisionEvidence, Geometry, Vec<Option<PromptTokens>>, u64);

/// The rows a run covers, each with how many of its samples: the limit counts samples in dataset order
/// (an unusable row counts as one), then the shard picks rows.
fn select(data: &Dataset, limit: Option<usize>, shard: Option<Shard>) -> Vec<(&Row, usize)> {
    let mut left = limit;
    let mut selected = Vec::new();
    for row in &data.rows {
        if left == Some(0) {
            break;
        }
        let n = row.samples.as_ref().map_or(1, Vec::len);
        let take = left.map_or(n, |l| n.min(l));
        left = left.map(|l| l - take);
        if shard.is_none_or(|s| (row.row - 1) % s.count == s.index) {
            selected.push((row, take));
        }
    }
    selected
}

/// What an answer is computed from: the row as stored, the sample in it, its prompt, the image's bytes
/// (one part of varying length, so the parts cannot run into each other).
fn input_hash(row: &Row, s: &Sample, image: u64) -> String {
    let f = Fnv1a::default()
        .feed(&row.hash.to_le_bytes())
        .feed(&(s.sub as u64).to_le_bytes())
        .feed(s.prompt.as_bytes())
        .feed(&image.to_le_bytes());
    format!("{:016x}", f.finish())
}

/// Refuses to resume when an answer on file was computed from a row or image that has changed since
/// (its score would be stale); reads the image of every answered row once.
fn check_answers_current(
    data: &Dataset,
    selected: &[(&Row, usize)],
    done: &HashMap<(usize, usize, String), String>,
    configs: &[String],
    pred_path: &Path,
) -> Result<()> {
    let changed = |row: usize, why: String| {
        Error::io(
            pred_path,
            format!("cannot `resume`: row {row} {why} since it was answered; use another `out` for the changed data"),
        )
    };
    let answered_rows: HashSet<usize> = done.keys().map(|k| k.0).collect();
    let mut images = data::ImageReader::new();
    for (row, take) in selected.iter().filter(|(r, _)| answered_rows.contains(&r.row)) {
        let samples = match &row.samples {
            Ok(s) => &s[..*take],
            Err(msg) => return Err(changed(row.row, format!("became unusable ({msg})"))),
        };
        let image = match images.bytes(data, row) {
            Ok((bytes, _)) => Fnv1a::of(&bytes),
            Err(msg) => return Err(changed(row.row, format!("lost its image ({msg})"))),
        };
        for s in samples {
            let now = input_hash(row, s, image);
            for h in configs.iter().filter_map(|c| done.get(&(row.row, s.sub, c.clone()))) {
                if h.is_empty() {
                    return Err(changed(
                        row.row,
                        "may have changed (its answers carry no fingerprint: an older nuwa wrote them)".into(),
                    ));
                }
                if *h != now {
                    return Err(changed(row.row, "changed (its line or record, or its image)".into()));
                }
            }
        }
    }
    Ok(())
}

/// Problems tokenising a row's question (the data's fault: an `<image>` in the text, an encoding
/// failure, a prompt longer than the context) as opposed to failures of the engine or the machine.
fn is_row_error(e: &Error) -> bool {
    matches!(e, Error::Image(_) | Error::ContextOverflow { .. } | Error::Invalid { .. } | Error::Tokenizer { .. })
}

fn with_sub(msg: &str, s: &Sample, n: usize) -> String {
    if n > 1 {
        format!("expression {}: {msg}", s.sub)
    } else {
        msg.to_owned()
    }
}

#[allow(clippy::too_many_arguments)]
fn record_error(
    opts: &RunOptions,
    file: &mut std::fs::File,
    err_path: &Path,
    pred_path: &Path,
    report: &mut RunReport,
    on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    row: usize,
    message: String,
) -> Result<()> {
    let e = RowError { row, message };
    append_line(file, err_path, &e)?;
    let _ = on_event(Event::RowError { row, message: &e.message });
    if opts.on_error == OnError::Fail {
        return Err(Error::RowFailed(format!(
            "row {row}: {}\n(`on_error` fail: stopped; {} answers of this run and all earlier ones are kept in {}; \
             fix the row or pass `on_error` skip, then continue with `resume`)",
            e.message,
            report.ran,
            pred_path.display()
        )));
    }
    report.errors.push(e);
    Ok(())
}

/// Fills the task's fields of `p` by scoring its response against `truth` (`geometry`: the sample's
/// image; REC normalises the ground truth with its size and maps boxes with it).
pub fn score(p: &mut Prediction, truth: &Truth, geometry: &Geometry, frame: RecBoxes) {
    match truth {
        Truth::Rec { expression, bbox } => {
            let gt = rec::gt_box_from_coco(*bbox, f64::from(geometry.width), f64::from(geometry.height));
            let parsed = rec::parse_box(&p.response);
            let scored = match frame {
                RecBoxes::Padded => parsed.map(|b| geometry.answer_normalized(b)),
                RecBoxes::Original => parsed.map(|b| geometry.answer_to_original(b)),
            }
            .unwrap_or([0.0; 4]);
            let iou = rec::iou(gt, scored);
            p.expression = Some(expression.clone());
            p.bbox = Some(*bbox);
            p.image_size = Some([geometry.width, geometry.height]);
            p.gt_box = Some(gt);
            p.pred_box = parsed;
            p.scored_box = Some(scored);
            p.iou = Some(iou);
            p.acc = Some(rec::THRESHOLDS.map(|t| iou >= t));
            p.center = Some(rec::center_hit(gt, scored));
        }
        Truth::Vqa { answers } => {
            let s = vqa::score_row(&p.response, answers);
            p.answers = Some(answers.clone());
            p.pred = Some(s.pred);
            p.accuracy = Some(s.accuracy);
            p.exact_match = Some(s.exact_match);
        }
        Truth::YesNo(truth) => {
            let s = yesno::score_row(&p.response, *truth);
            p.answer = Some(truth.as_str().into());
            p.pred = Some(s.pred);
            p.correct = Some(s.correct);
        }
        Truth::Choice { answer, .. } => {
            let s = choice::score_row(&p.response, *answer);
            p.answer = Some(answer.to_string());
            p.pred = s.pred.map(|c| c.to_string());
            p.correct = Some(s.correct);
        }
    }
}

fn append_line<T: Serialize>(file: &mut std::fs::File, path: &Path, value: &T) -> Result<()> {
    let mut line = serde_json::to_string(value).map_err(|e| Error::io(path, e))?;
    line.push('\n');
    file.write_all(line.as_bytes())
        .and_then(|_| file.flush())
        .map_err(|e| Error::io(path, format!("cannot write: {e}")))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::io(path, e))?;
    text.push('\n');
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, format!("cannot write: {e}")))
}

pub fn read_run_file(path: &Path) -> Result<RunFile> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(path, format!("cannot read the run description: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not a nuwa eval run.json: {e}")))
}

/// Drops a torn last line (a run killed mid-write) so appending continues on a fresh line.
fn repair_tail(path: &Path) -> Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, format!("cannot read: {e}"))),
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tail = &bytes[start..];
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, format!("cannot open: {e}")))?;
    if serde_json::from_slice::<Prediction>(tail).is_ok() {
        // Complete but for the newline.
        f.write_all(b"\n").and_then(|_| f.flush()).map_err(|e| Error::io(path, format!("cannot write: {e}")))
    } else {
        f.set_len(start as u64).map_err(|e| Error::io(path, format!("cannot truncate a torn last line: {e}")))
    }
}

/// The predictions of a folder's file, first occurrence of each (row, sample, configuration) kept; a torn
/// last line is ignored, any other bad line is an error.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    read_jsonl(path, |p: &Prediction| p.key())
}

pub fn read_errors(path: &Path) -> Result<Vec<RowError>> {
    read_jsonl(path, |e: &RowError| (e.row, e.message.clone()))
}

fn read_jsonl<T: serde::de::DeserializeOwned, K: std::hash::Hash + Eq>(
    path: &Path,
    key: impl Fn(&T) -> K,
) -> Result<Vec<T>> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, format!("cannot read: {e}"))),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(v) => {
                if seen.insert(key(&v)) {
                    out.push(v);
                }
            }
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => return Err(Error::config(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The summary of `preds` (any order; duplicates already removed) for the configurations `configs`
/// (plus any found in `preds`).
pub fn summarize(settings: &Settings, configs: &[String], preds: &[Prediction], errors: &[RowError]) -> Summary {
    let task = settings.task;
    let mut by_config: BTreeMap<String, Vec<&Prediction>> = configs.iter().map(|c| (c.clone(), Vec::new())).collect();
    for p in preds {
        by_config.entry(p.config.clone()).or_default().push(p);
    }
    let mut names: Vec<String> = by_config.keys().cloned().collect();
    names.sort_by_key(|c| config_order(c));
    let mut rows = Vec::new();
    let mut timings = serde_json::Map::new();
    for name in &names {
        let ps = by_config.get_mut(name).expect("key");
        ps.sort_by_key(|p| (p.row, p.sub));
        let metrics = metrics(task, ps);
        let (prune, budget) = split_config(name);
        rows.push(ConfigSummary {
            config: name.clone(),
            prune,
            budget,
            n: ps.len(),
            metrics,
            retention_pct: None,
            avg_vision_tokens: mean(ps.iter().filter_map(|p| p.avg_vision_tokens)),
        });
        timings.insert(
            name.clone(),
            json!({
                "vision_ms": mean(ps.iter().map(|p| p.timings.vision_ms)),
                "stage1_ms": mean(ps.iter().map(|p| p.timings.stage1_ms)),
                "prefill_ms": mean(ps.iter().map(|p| p.timings.prefill_ms)),
                "decode_ms_per_token": mean(ps.iter().map(|p| p.timings.decode_ms_per_token)),
            }),
        );
    }
    let headline = task.headline();
    let value = |r: &ConfigSummary| r.metrics.get(headline).and_then(Value::as_f64);
    // The unpruned run is 100 % by definition; the others need a non-zero unpruned score to be relative to.
    let base = rows.iter().find(|r| r.config == "none" && r.n > 0).and_then(value);
    for r in &mut rows {
        r.retention_pct = match (base, value(r)) {
            (Some(_), Some(_)) if r.n > 0 && r.config == "none" => Some(100.0),
            (Some(b), Some(v)) if r.n > 0 && b > 0.0 => Some(v / b * 100.0),
            _ => None,
        };
    }
    let n_samples = preds.iter().map(|p| (p.row, p.sub)).collect::<HashSet<_>>().len();
    let mut errors = errors.to_vec();
    errors.sort_by(|a, b| (a.row, &a.message).cmp(&(b.row, &b.message)));
    errors.dedup();
    let written = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Summary {
        task,
        headline: headline.into(),
        settings: settings.clone(),
        n_samples,
        configs: rows,
        errors,
        timings: json!({ "per_config": timings, "written_at_unix": written }),
    }
}

/// The task's metrics over one configuration's predictions (sorted by row and sample).
fn metrics(task: Task, ps: &[&Prediction]) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    match task {
        Task::Rec => {
            let rows: Vec<rec::RecRowScore> = ps
                .iter()
                .map(|p| rec::RecRowScore {
                    parsed: p.pred_box,
                    iou: p.iou.unwrap_or(0.0),
                    acc: p.acc.unwrap_or([false; 5]),
                    center: p.center.unwrap_or(false),
                })
                .collect();
            if let Value::Object(o) = rec::summarize(&rows).to_json() {
                m.extend(o.into_iter().filter(|(k, _)| k != "n"));
            }
            m.insert("unparsed".into(), json!(ps.iter().filter(|p| p.pred_box.is_none()).count()));
        }
        Task::Vqa => {
            let rows: Vec<(f64, bool)> =
                ps.iter().map(|p| (p.accuracy.unwrap_or(0.0), p.exact_match.unwrap_or(false))).collect();
            let s = vqa::summarize(&rows);
            m.insert("accuracy".into(), json!(s.accuracy));
            m.insert("exact_match".into(), json!(s.exact_match));
        }
        Task::Yesno => {
            let rows: Vec<yesno::YesNoRow> = ps
                .iter()
                .filter_map(|p| {
                    let truth = yesno::YesNo::parse(p.answer.as_deref()?)?;
                    Some(yesno::YesNoRow {
                        pred: p.pred.clone().unwrap_or_default(),
                        truth,
                        correct: p.correct.unwrap_or(false),
                    })
                })
                .collect();
            let s = yesno::summarize(&rows);
            for (k, v) in [
                ("accuracy", s.accuracy),
                ("precision", s.precision),
                ("recall", s.recall),
                ("f1", s.f1),
                ("yes_ratio", s.yes_ratio),
            ] {
                m.insert(k.into(), json!(v));
            }
            m.insert("unparsed".into(), json!(s.unparsed));
        }
        Task::Choice => {
            let rows: Vec<choice::ChoiceRow> = ps
                .iter()
                .map(|p| choice::ChoiceRow {
                    pred: p.pred.as_deref().and_then(|s| s.chars().next()),
                    correct: p.correct.unwrap_or(false),
                })
                .collect();
            let s = choice::summarize(&rows);
            m.insert("accuracy".into(), json!(s.accuracy));
            m.insert("unparsed".into(), json!(s.unparsed));
        }
    }
    m
}

/// The summary as a plain-text table: per configuration, the task's metrics (in %), vision tokens and
/// retention.
pub fn format_table(s: &Summary) -> String {
    let cols = s.task.table_metrics();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} · {} samples · headline {} · {} row error{}",
        s.task.name(),
        s.n_samples,
        s.headline,
        s.errors.len(),
        if s.errors.len() == 1 { "" } else { "s" }
    );
    let mut header = format!("{:<12} {:>7}", "config", "n");
    for c in cols {
        let _ = write!(header, " {:>10}", c);
    }
    let _ = write!(header, " {:>8} {:>10}", "tokens", "retention");
    let _ = writeln!(out, "{header}");
    for r in &s.configs {
        let mut line = format!("{:<12} {:>7}", r.config, r.n);
        for c in cols {
            match r.metrics.get(*c).and_then(Value::as_f64) {
                Some(v) if r.n > 0 => {
                    let _ = write!(line, " {:>10.2}", v * 100.0);
                }
                _ => {
                    let _ = write!(line, " {:>10}", "–");
                }
            }
        }
        match r.avg_vision_tokens {
            Some(t) => {
                let _ = write!(line, " {:>8.1}", t);
            }
            None => {
                let _ = write!(line, " {:>8}", "–");
            }
        }
        match r.retention_pct {
            Some(p) => {
                let _ = write!(line, " {:>9.2}%", p);
            }
            None => {
                let _ = write!(line, " {:>10}", "–");
            }
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Whether `dir` holds (part of) a run.
fn holds_run(dir: &Path) -> bool {
    dir.join(RUN_FILE).exists() || std::fs::metadata(dir.join(PREDICTIONS_FILE)).is_ok_and(|m| m.len() > 0)
}

/// What [`merge`] found.
#[derive(Debug)]
pub struct MergeReport {
    pub summary: Summary,
    /// Shard indices absent from the inputs when they are shards of one split (else empty).
    pub missing_shards: Vec<usize>,
    /// Inputs without a summary: interrupted, failed, or never finished.
    pub unfinished: Vec<PathBuf>,
    /// Sample × configuration answers the data calls for that are neither in the predictions nor on a
    /// row recorded as unusable; `None` when the data files named in the settings cannot be read here.
    pub missing_answers: Option<usize>,
    pub predictions: usize,
}

/// Combines the output folders of shards (or of any runs with the same settings) into `out`:
/// predictions (sorted, duplicates dropped), errors, `run.json` and the summary. Shards must come from
/// one split and one limit; what is missing is reported in the [`MergeReport`].
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<MergeReport> {
    if dirs.is_empty() {
        return Err(Error::invalid("dirs", "is empty: merge needs at least one run folder"));
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if dirs.iter().any(|d| canon(d) == canon(out)) {
        return Err(Error::io(out, "merge: `out` must be a new folder, not one of the inputs"));
    }
    if holds_run(out) {
        return Err(Error::io(
            out,
            "merge: `out` already holds a run (run.json, predictions.jsonl); choose a new folder",
        ));
    }
    let mut distinct = HashSet::new();
    if let Some(d) = dirs.iter().find(|d| !distinct.insert(canon(d))) {
        return Err(Error::io(d, "merge: this folder is given twice"));
    }
    let mut locks = Vec::new();
    let mut runs: Vec<RunFile> = Vec::new();
    let mut configs = BTreeSet::new();
    let mut preds = Vec::new();
    let mut errors = Vec::new();
    let mut unfinished = Vec::new();
    for d in dirs {
        let run = read_run_file(&d.join(RUN_FILE))?;
        // A folder still being written would be merged half-done.
        locks.push(FolderLock::take(d)?);
        if let Some(f) = runs.first() {
            if let Some(diff) = f.settings.difference(&run.settings) {
                return Err(Error::io(d, format!("merge: settings differ from {} ({diff})", dirs[0].display())));
            }
            if f.limit != run.limit {
                let show = |l: Option<usize>| l.map_or("none".to_string(), |l| l.to_string());
                return Err(Error::io(
                    d,
                    format!(
                        "merge: ran with `limit` {} but {} with {}: the shards cover different samples",
                        show(run.limit),
                        dirs[0].display(),
                        show(f.limit)
                    ),
                ));
            }
        }
        if let Some(s) = run.shard {
            if let Some((other, o)) = runs.iter().zip(dirs).find_map(|(r, d)| r.shard.map(|s| (d, s))) {
                if o.count != s.count {
                    return Err(Error::io(
                        d,
                        format!("merge: shard {s} is not of the same split as {} (shard {o})", other.display()),
                    ));
                }
            }
            if let Some(twice) = runs.iter().zip(dirs).find(|(r, _)| r.shard == Some(s)) {
                return Err(Error::io(d, format!("merge: shard {s} is given twice (also {})", twice.1.display())));
            }
        }
        if runs.first().is_some_and(|f| f.shard.is_some() != run.shard.is_some()) {
            return Err(Error::io(d, format!("merge: mixes shards with unsharded runs (see {})", dirs[0].display())));
        }
        if !d.join(SUMMARY_FILE).exists() {
            unfinished.push(d.clone());
        }
        configs.extend(run.configs.iter().cloned());
        preds.extend(read_predictions(&d.join(PREDICTIONS_FILE))?);
        errors.extend(read_errors(&d.join(ERRORS_FILE))?);
        runs.push(run);
    }
    let first = &runs[0];
    let missing_shards = match first.shard {
        Some(s0) => {
            let have: HashSet<usize> = runs.iter().filter_map(|r| r.shard).map(|s| s.index).collect();
            (0..s0.count).filter(|i| !have.contains(i)).collect()
        }
        None => Vec::new(),
    };
    let mut seen = HashSet::new();
    preds.retain(|p| seen.insert(p.key()));
    preds.sort_by_key(|a| (a.row, a.sub, config_order(&a.config)));
    let mut configs: Vec<String> = configs.into_iter().collect();
    configs.sort_by_key(|c| config_order(c));
    let missing_answers = missing_answers(first, &configs, &seen, &errors);

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, format!("cannot create the output folder: {e}")))?;
    locks.push(FolderLock::take(out)?);
    let write_lines = |name: &str, lines: Vec<String>| -> Result<()> {
        let path = out.join(name);
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(|e| Error::io(&path, format!("cannot write: {e}")))
    };
    write_lines(PREDICTIONS_FILE, preds.iter().map(|p| serde_json::to_string(p).expect("plain data")).collect())?;
    let summary = summarize(&first.settings, &configs, &preds, &errors);
    write_lines(ERRORS_FILE, summary.errors.iter().map(|e| serde_json::to_string(e).expect("plain data")).collect())?;
    let run = RunFile { settings: first.settings.clone(), configs, shard: None, limit: first.limit };
    write_json(&out.join(RUN_FILE), &run)?;
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    Ok(MergeReport { summary, missing_shards, unfinished, missing_answers, predictions: preds.len() })
}

/// How many answers the whole selection (every shard) calls for that neither `answered` nor a recorded
/// row error accounts for; `None` when the data cannot be read.
fn missing_answers(
    run: &RunFile,
    configs: &[String],
    answered: &HashSet<(usize, usize, String)>,
    errors: &[RowError],
) -> Option<usize> {
    let paths: Vec<PathBuf> = run.settings.data.iter().map(PathBuf::from).collect();
    let data = Dataset::open(&paths, run.settings.task).ok()?;
    let failed: HashSet<usize> = errors.iter().map(|e| e.row).collect();
    let mut missing = 0;
    for (row, take) in select(&data, run.limit, None) {
        let Ok(samples) = &row.samples else { continue };
        if failed.contains(&row.row) {
            continue;
        }
        for s in &samples[..take] {
            missing += configs.iter().filter(|c| !answered.contains(&(row.row, s.sub, (*c).clone()))).count();
        }
    }
    Some(missing)
}
