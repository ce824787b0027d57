//! Command-line flags. Pruning and model flags are shared by every command that runs the model.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nuwa::prune::nuwa::{Stage2Rule, Stages};
use nuwa::prune::{fastv, PositionPolicy, PruneSpec};
use nuwa::Method;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "nuwa", version, about = "LLaVA inference with spatially faithful visual-token pruning (Nüwa)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer a question about an image (or a text-only prompt), streaming the answer.
    Generate(GenerateArgs),
    /// Locate a referring expression in an image: the box as parsed, in the original image, drawn.
    Ground(crate::commands::ground::GroundArgs),
    /// Measure prefill latency, FLOPs and KV-cache memory for pruning methods and budgets.
    Bench(crate::commands::bench::BenchArgs),
    /// Accuracy per pruning method and budget over a dataset, with retention vs the unpruned model
    /// (resumable, shardable; `nuwa eval merge` combines shards).
    Eval(crate::commands::eval::EvalArgs),
    /// Score saved model answers against ground truth.
    #[command(subcommand)]
    Score(ScoreCommand),
    /// Serve the OpenAI chat-completions API (with per-request pruning) over HTTP.
    Serve(crate::commands::serve::ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum ScoreCommand {
    /// Referring-expression grounding (RefCOCO style): IoU, Acc@0.1…0.9, centre accuracy.
    Rec {
        /// JSONL file, one object per line with `response` (the model's text) and `bbox`
        /// ([x1, y1, x2, y2] normalised to the image); optionally `pixel_frame` [width, height] when the
        /// answer is in pixels of a resized image (Qwen2.5-VL: its smart-resized size), which normalises it.
        #[arg(long)]
        predictions: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A hub checkpoint directory (config.json, *.safetensors, tokenizer.json, preprocessor_config.json);
    /// the model family is read from config.json. With the `hub` feature, a hub id such as llava-hf/llava-1.5-7b-hf.
    #[arg(long, value_name = "DIR")]
    pub model: String,
    /// Weight dtype. On the CPU bf16 and f16 weights compute in f32 (activations and attention; the KV
    /// cache is held in the weights' dtype); on CUDA everything runs in this dtype.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Where to run: cpu, or cuda (needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Qwen2.5-VL: resize images to at most this many pixels (fewer vision tokens; one per 28×28 pixels)
    /// [default: preprocessor_config.json's max_pixels]. The released grounding scripts use 1003520.
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// Quantise the decoder's linears and LM head (and LLaVA's projector) at load, one layer at a time:
    /// q8_0 (8.5 bits a weight) or q4_k (4.5 in llama.cpp's files, 4.625 as held here), llama.cpp's
    /// formats, each weight held once; activations stay f32 (decoding's q8_0 products quantise the row
    /// to 8 bits, as llama.cpp does) and the KV cache is f16, as llama.cpp's. A layer whose input
    /// width does not fill q4_k's 256-blocks takes q8_0, one that does not fill 32-blocks stays dense.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum QuantizeArg {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl QuantizeArg {
    pub fn format(self) -> nuwa::models::linear::Quantize {
        match self {
            QuantizeArg::Q8_0 => nuwa::models::linear::Quantize::Q8_0,
            QuantizeArg::Q4K => nuwa::models::linear::Quantize::Q4K,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PruneArg {
    /// Keep every vision token.
    None,
    /// Nüwa: spatial anchors + aggregation after the encoder, text-guided cut mid-decoder.
    Nuwa,
    /// FastV: one cut before decoder layer 2 by the last token's attention.
    Fastv,
    /// VisionZip: [CLS] + dominant patches + contextual merges, before the projector.
    Visionzip,
    /// Adaptive average pooling of the patch grid.
    Pool,
    /// A seeded random subset of patches (--seed).
    Random,
    /// DivPrune: max–min diversity over the projected tokens.
    Divprune,
    /// DART: duplication-aware pivots before decoder layer 2.
    Dart,
    /// PyramidDrop: cuts after layers 2, 6, 15 (budgets 64, 96, 128, 192).
    Pdrop,
    /// SparseVLM v1.5: text-rater cuts with recycling (budgets 64, 96, 128, 192).
    Sparsevlm,
    /// VisPruner: important + diverse patches.
    Vispruner,
    /// Keep the patches listed in --keep-file.
    Manual,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FastvCountArg {
    /// The budget is the mean over layers (how Nüwa, SparseVLM and VisionZip compare): R = 30/98/166.
    Average,
    /// The budget is what survives the cut (how DART and CDPruner count).
    Kept,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PositionsArg {
    /// Tokens keep their unpruned position ids.
    Original,
    /// The shortened sequence is numbered without gaps.
    Contiguous,
    /// Kept tokens spread over the image's span in proportion to their raster index.
    Stretched,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StagesArg {
    Both,
    #[value(name = "1")]
    One,
    #[value(name = "2")]
    Two,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Stage2RuleArg {
    Attention,
    Random,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Visual-token reduction method.
    #[arg(long, value_enum, default_value_t = PruneArg::Nuwa)]
    pub prune: PruneArg,
    /// Vision-token budget, or a keep ratio written with a percent sign (25%). Nüwa: the mean over the
    /// decoder's layers (64 → K1 112 / K2 16, 128 → 224 / 32, 192 → 336 / 48; other values by the same rule;
    /// a percentage keeps that share of the image's tokens). On LLaVA-NeXT: the paper's 160/320/640 (K1
    /// 290/582/1162 split over the views, K2 a tenth of the tokens in the decoder); other values K1 =
    /// round(1.8125·B). On Qwen2.5-VL only keep ratios: 25%, 50% (the default) or 75% (stage-1/stage-2
    /// ratios 0.35/0.42, 0.6/0.66, 0.85/0.7, top-n 3/3/4), or --stage1-ratio, --stage2-ratio and --top-n.
    /// Baselines: a token count; their published LLaVA-1.5 setting for it (see the README's baselines
    /// table); the JSON reports the resulting mean as avg_vision_tokens.
    #[arg(long, default_value = "128", value_parser = parse_budget)]
    pub budget: Budget,
    /// Nüwa's stage-1 keep ratio r1 (K1 = ⌈N·r1⌉), with --stage2-ratio and --top-n instead of a preset.
    #[arg(long, requires_all = ["stage2_ratio", "top_n"])]
    pub stage1_ratio: Option<f64>,
    /// Nüwa's stage-2 keep ratio r2 (K2 = ⌊K1·r2⌋).
    #[arg(long, requires_all = ["stage1_ratio", "top_n"])]
    pub stage2_ratio: Option<f64>,
    /// Nüwa's candidates per 2×2 cell (1–4) with explicit stage ratios.
    #[arg(long, requires_all = ["stage1_ratio", "stage2_ratio"])]
    pub top_n: Option<usize>,
    /// Nüwa as its authors released it where that differs from the paper. Qwen2.5-VL: the similarity
    /// features stay in the vision tower's window order, and the stage-2 layer attends without the causal
    /// mask during prefill. LLaVA-1.5: no difference. LLaVA-NeXT: no difference either (the released NeXT
    /// code's bugs — positions scrambled after the first newline, crop grids stitched on the wrong axis —
    /// would make a different model, and are not reproduced).
    #[arg(long)]
    pub as_released: bool,
    /// Which Nüwa stages run: both, 1 (K1 = budget, no cut) or 2 (all patches in, budget survive the cut).
    #[arg(long, value_enum, default_value_t = StagesArg::Both)]
    pub stages: StagesArg,
    /// Squared radius (patches²) of the similarity fall-off in stage 1 (Qwen2.5-VL: not read; 0.8 of the
    /// merged grid's diagonal).
    #[arg(long, default_value_t = 280.0, allow_negative_numbers = true)]
    pub distance: f64,
    /// Anchors at or above this quantile of anchor saliency are pillars (kept unchanged) [default: 0.55;
    /// 0.5 on LLaVA-NeXT, as its released launch script sets; 0.1 on Qwen2.5-VL, as its release does].
    #[arg(long, allow_negative_numbers = true)]
    pub pillar_quantile: Option<f64>,
    /// Select anchors by global saliency only, without the 2×2 cell grouping (ablation).
    #[arg(long)]
    pub no_cells: bool,
    /// Decoder layer before which stage 2 cuts [default: half the decoder depth; on Qwen2.5-VL one layer
    /// later, as its release scores layer 14 of 28 and cuts after it].
    #[arg(long)]
    pub stage2_layer: Option<usize>,
    /// How stage 2 ranks vision tokens: the last prompt token's attention, or a seeded random subset.
    #[arg(long, value_enum, default_value_t = Stage2RuleArg::Attention)]
    pub stage2_rule: Stage2RuleArg,
    /// How FastV reads --budget.
    #[arg(long, value_enum, default_value_t = FastvCountArg::Average)]
    pub fastv_count: FastvCountArg,
    /// For --prune manual: a JSON file with a list of patch indices (raster order) to keep.
    #[arg(long, value_name = "FILE")]
    pub keep_file: Option<PathBuf>,
    /// Position ids of the kept tokens [default: the method's own: original for none, nuwa, fastv,
    /// dart; contiguous for the others].
    #[arg(long, value_enum)]
    pub positions: Option<PositionsArg>,
}

pub use nuwa::prune::Budget;

/// `--budget` / `--budgets`: a token count, or a keep ratio as a percentage.
pub fn parse_budget(s: &str) -> Result<Budget, String> {
    s.parse()
}

impl PruneArgs {
    /// The flags as the library's pruning spec.
    pub fn spec(&self, seed: u64) -> anyhow::Result<PruneSpec> {
        let keep = match &self.keep_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
                Some(serde_json::from_str(&text).with_context(|| {
                    format!("{}: expected a JSON list of patch indices like [0, 5, 17]", path.display())
                })?)
            }
        };
        Ok(PruneSpec {
            method: self.prune.to_possible_value().expect("no skipped values").get_name().to_owned(),
            budget: match self.budget {
                Budget::Tokens(n) => n,
                Budget::Percent(_) => PruneSpec::default().budget,
            },
            keep_ratio: match self.budget {
                Budget::Percent(p) => Some(p / 100.0),
                Budget::Tokens(_) => None,
            },
            stage1_ratio: self.stage1_ratio,
            stage2_ratio: self.stage2_ratio,
            top_n: self.top_n,
            as_released: self.as_released,
            stages: match self.stages {
                StagesArg::Both => Stages::Both,
                StagesArg::One => Stages::One,
                StagesArg::Two => Stages::Two,
            },
            distance: self.distance,
            pillar_quantile: self.pillar_quantile,
            cells: !self.no_cells,
            stage2_layer: self.stage2_layer,
            stage2_rule: match self.stage2_rule {
                Stage2RuleArg::Attention => Stage2Rule::Attention,
                Stage2RuleArg::Random => Stage2Rule::Random,
            },
            fastv_count: match self.fastv_count {
                FastvCountArg::Average => fastv::Count::Average,
                FastvCountArg::Kept => fastv::Count::Kept,
            },
            keep,
            positions: self.positions(),
            seed,
        })
    }

    pub fn method(&self, seed: u64) -> anyhow::Result<Method> {
        Ok(self.spec(seed)?.method()?)
    }

    /// The position policy override, if any.
    pub fn positions(&self) -> Option<PositionPolicy> {
        self.positions.map(|p| match p {
            PositionsArg::Original => PositionPolicy::Original,
            PositionsArg::Contiguous => PositionPolicy::Contiguous,
            PositionsArg::Stretched => PositionPolicy::Stretched,
        })
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file (PNG, JPEG, WebP, BMP, GIF, TIFF).
    #[arg(long, conflicts_with = "pixel_values")]
    pub image: Option<PathBuf>,
    /// A safetensors file whose `pixel_values` tensor ([3,H,W] or [1,3,H,W]) replaces preprocessing.
    #[arg(long, value_name = "FILE")]
    pub pixel_values: Option<PathBuf>,
    /// The question; it goes into the vicuna_v1 conversation after the image.
    #[arg(long)]
    pub prompt: String,
    /// Stop after this many generated tokens (generation also stops at end-of-sequence or a full context).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed for sampling and for `--stage2-rule random`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this text appears in the answer (repeat for several; stop_reason is then "stop").
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// Print one JSON object (text, tokens, timings, what pruning kept) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Draw what pruning kept over the image, written as a PNG (needs --image).
    #[arg(long, value_name = "OUT.png")]
    pub overlay: Option<PathBuf>,
    /// With --overlay: draw the per-patch [CLS] saliency instead of what pruning kept.
    #[arg(long, requires = "overlay")]
    pub heatmap: bool,
}
