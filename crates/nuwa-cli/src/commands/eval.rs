//! `nuwa eval`: accuracy of every pruning configuration over a dataset, with retention relative to the
//! unpruned model; `nuwa eval merge` combines shard outputs. The work is done by `nuwa::eval`.

use crate::args::{DTypeArg, DeviceArg, ModelArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nuwa::eval::{self, EvalConfig, Event, OnError, RecBoxes, RunOptions, Shard, Summary, Task};
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    /// A hub checkpoint directory (LLaVA-1.5, LLaVA-NeXT or Qwen2.5-VL; or a hub id with the `hub` feature).
    #[arg(long, value_name = "DIR")]
    pub model: Option<String>,
    /// Qwen2.5-VL: resize images to at most this many pixels [default: preprocessor_config.json's].
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// Quantise the decoder at load: q8_0 or q4_k (see `nuwa generate --help`).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::args::QuantizeArg>,
    /// Weight dtype. On the CPU bf16 and f16 weights compute in f32 (activations and attention; the KV
    /// cache is held in the weights' dtype); on CUDA everything runs in this dtype.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Where to run: cpu, or cuda (needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// JSONL manifest(s) and/or lmms-eval Parquet file(s), or folders of them (shell globs work:
    /// `--data RefCOCO/data/test-*.parquet`).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub data: Vec<PathBuf>,
    /// What is asked and how it is scored.
    #[arg(long, value_enum)]
    pub task: Option<TaskArg>,
    /// Pruning methods, comma-separated (none, nuwa, fastv, visionzip, pool, random, divprune, dart, pdrop,
    /// sparsevlm, vispruner); `none` runs once, the others at every budget.
    #[arg(long, value_delimiter = ',', default_value = "none,nuwa")]
    pub prune: Vec<String>,
    /// Vision-token budgets, comma-separated; a percentage is Nüwa's keep ratio (Qwen2.5-VL: 25%,50%,75%).
    #[arg(long, value_delimiter = ',', default_value = "64,128,192", value_parser = crate::args::parse_budget)]
    pub budgets: Vec<crate::args::Budget>,
    /// Output folder: run.json, predictions.jsonl, errors.jsonl, summary.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Answer length limit [default: 64 for rec, 16 otherwise].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Only the first N samples of the dataset (before sharding).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Continue the run in --out: answers already in its predictions.jsonl are not computed again.
    #[arg(long)]
    pub resume: bool,
    /// Run part i of N (0-based): the rows with (row − 1) mod N = i. Combine with `nuwa eval merge`.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<String>,
    /// What an unusable row (malformed, unreadable image) does: recorded and skipped, or recorded and
    /// the run stops.
    #[arg(long, value_enum, default_value_t = OnErrorArg::Skip)]
    pub on_error: OnErrorArg,
    /// REC only: score the box as answered (padded-square frame, as lmms-eval does) or mapped onto the
    /// original image first.
    #[arg(long, value_enum, default_value_t = RecBoxesArg::Padded)]
    pub rec_boxes: RecBoxesArg,
    /// Seed for seeded method variants (decoding is greedy).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print summary.json instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Combine the output folders of shards (`--shard i/N` runs) into one summary.
    Merge {
        /// The shard output folders.
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Where the merged predictions and summary go (a new folder).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Print summary.json instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TaskArg {
    /// Referring-expression grounding (RefCOCO family); headline Acc@0.5.
    Rec,
    /// Short-answer VQA (VQAv2, TextVQA, GQA); VQA soft accuracy.
    Vqa,
    /// Yes/no (POPE); F1, accuracy, precision, recall.
    Yesno,
    /// Multiple choice by letter (ScienceQA, MMBench); accuracy.
    Choice,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnErrorArg {
    Skip,
    Fail,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecBoxesArg {
    Padded,
    Original,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(EvalCommand::Merge { dirs, out, json }) = args.command {
        return merge(&dirs, &out, json);
    }
    let need = |what: &str| anyhow::anyhow!("nuwa eval needs {what} (or `nuwa eval merge DIR… --out DIR`)");
    let model = args.model.clone().ok_or_else(|| need("--model DIR"))?;
    if args.data.is_empty() {
        return Err(need("--data PATH"));
    }
    let task = match args.task.ok_or_else(|| need("--task rec|vqa|yesno|choice"))? {
        TaskArg::Rec => Task::Rec,
        TaskArg::Vqa => Task::Vqa,
        TaskArg::Yesno => Task::Yesno,
        TaskArg::Choice => Task::Choice,
    };
    let out = args.out.clone().ok_or_else(|| need("--out DIR"))?;
    if args.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let shard: Option<Shard> = args.shard.as_deref().map(str::parse).transpose()?;
    let configs = EvalConfig::grid(&args.prune, &args.budgets, args.seed)?;
    let opts = RunOptions {
        task,
        model: model.clone(),
        data: args.data.clone(),
        configs,
        max_new_tokens: args.max_new_tokens,
        rec_boxes: match args.rec_boxes {
            RecBoxesArg::Padded => RecBoxes::Padded,
            RecBoxesArg::Original => RecBoxes::Original,
        },
        seed: args.seed,
        out: out.clone(),
        limit: args.limit,
        shard,
        resume: args.resume,
        on_error: match args.on_error {
            OnErrorArg::Skip => OnError::Skip,
            OnErrorArg::Fail => OnError::Fail,
        },
    };
    let engine = super::load_engine(&ModelArgs {
        model,
        dtype: args.dtype,
        device: args.device,
        max_pixels: args.max_pixels,
        quantize: args.quantize,
    })?;

    let bar = ProgressBar::hidden();
    let mut on_event = |e: Event<'_>| {
        match e {
            Event::Planned { units, done, samples, rows } => {
                eprintln!(
                    "{samples} samples in {rows} rows × {} configurations: {units} answers to compute, {done} already done",
                    opts.configs.len()
                );
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(units as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} answers · {per_sec} · ETA {eta} · {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
            }
            Event::Answered { row, config } => {
                bar.set_message(format!("row {row} {config}"));
                bar.inc(1);
            }
            Event::RowError { row: _, message } => bar.suspend(|| eprintln!("skipped: {message}")),
        }
        ControlFlow::Continue(())
    };
    let report = eval::run(&engine, &opts, &mut on_event);
    bar.finish_and_clear();
    let report = report?;
    let summary = report.summary.context("the run stopped before its summary")?;
    eprintln!(
        "{} answers computed, {} already done, {} row error(s); wrote {}",
        report.ran,
        report.already_done,
        report.errors.len(),
        out.join(eval::SUMMARY_FILE).display()
    );
    print_summary(&summary, args.json)
}

fn merge(dirs: &[PathBuf], out: &std::path::Path, json: bool) -> Result<()> {
    let report = eval::merge(dirs, out)?;
    if !report.missing_shards.is_empty() {
        let list: Vec<String> = report.missing_shards.iter().map(|i| i.to_string()).collect();
        eprintln!("warning: shard(s) {} missing from the inputs: the summary covers part of the data", list.join(", "));
    }
    for d in &report.unfinished {
        eprintln!("warning: {} has no summary: that run was interrupted or has not finished", d.display());
    }
    match report.missing_answers {
        Some(0) => {}
        Some(n) => eprintln!(
            "warning: {n} answer(s) (sample × configuration) are missing: the summary covers part of the data; \
             finish the shards with `nuwa eval … --resume` and merge again"
        ),
        None => eprintln!("warning: the data files named in run.json cannot be read here: completeness not checked"),
    }
    eprintln!(
        "merged {} folder(s): {} predictions; wrote {}",
        dirs.len(),
        report.predictions,
        out.join(eval::SUMMARY_FILE).display()
    );
    print_summary(&report.summary, json)
}

fn print_summary(summary: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{}", eval::format_table(summary));
        for e in summary.errors.iter().take(10) {
            println!("row {}: {}", e.row, e.message);
        }
        if summary.errors.len() > 10 {
            println!("… {} more in errors.jsonl", summary.errors.len() - 10);
        }
    }
    Ok(())
}
