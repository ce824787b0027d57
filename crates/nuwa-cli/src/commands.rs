//! One function per subcommand.

use crate::args::{Cli, Command, DTypeArg, DeviceArg, GenerateArgs, ModelArgs, ScoreCommand};
use anyhow::{bail, Context, Result};
use nuwa::score::rec;
use nuwa::{Engine, GenerateRequest, ImageInput, LoadOptions, Sampling};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::Path;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Score(ScoreCommand::Rec { predictions, json }) => score_rec(&predictions, json),
    }
}

pub fn load_engine(args: &ModelArgs) -> Result<Engine> {
    let dtype = match args.dtype {
        DTypeArg::F32 => candle_core::DType::F32,
        DTypeArg::F16 => candle_core::DType::F16,
        DTypeArg::Bf16 => candle_core::DType::BF16,
    };
    let device = match args.device {
        DeviceArg::Cpu => candle_core::Device::Cpu,
        DeviceArg::Cuda => candle_core::Device::new_cuda(0)
            .context("--device cuda: no CUDA device (build with `--features cuda` on a machine with a GPU)")?,
    };
    let dir = nuwa::checkpoint::resolve(&args.model)?;
    Ok(Engine::load(&dir, &LoadOptions { dtype, device })?)
}

fn generate(args: GenerateArgs) -> Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let method = args.prune.method(args.seed)?;
    let engine = load_engine(&args.model)?;
    let image = match (&args.image, &args.pixel_values) {
        (Some(p), _) => Some(ImageInput::Path(p.clone())),
        (None, Some(p)) => Some(ImageInput::Pixels(nuwa::engine::read_pixel_values(p, engine.device())?)),
        (None, None) => None,
    };
    let req = GenerateRequest {
        prompt: args.prompt.clone(),
        image,
        method,
        sampling: Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed },
        max_new_tokens: args.max_new_tokens,
    };
    let mut stdout = std::io::stdout();
    let out = if args.json {
        engine.generate(&req, &mut |_| {})?
    } else {
        let out = engine.generate(&req, &mut |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        })?;
        println!();
        out
    };
    if args.json {
        let t = &out.timings;
        let value = json!({
            "text": out.text,
            "tokens": out.tokens,
            "prompt_tokens": out.prompt_tokens,
            "stop_reason": out.stop_reason,
            "timings_ms": {
                "vision": t.vision_ms,
                "stage1": t.stage1_ms,
                "prefill": t.prefill_ms,
                "decode_per_token": t.decode_ms_per_token,
            },
            "kv_cache_bytes": out.kv_cache_bytes,
            "vision": out.vision,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

fn score_rec(path: &Path, as_json: bool) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}: not JSON", at()))?;
        let response = v["response"].as_str().with_context(|| format!("{}: missing string field `response`", at()))?;
        let bbox: [f64; 4] = serde_json::from_value(v["bbox"].clone())
            .with_context(|| format!("{}: field `bbox` must be [x1, y1, x2, y2] (normalised numbers)", at()))?;
        rows.push(rec::score_row(response, bbox));
    }
    let summary = rec::summarize(&rows);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&summary.to_json())?);
    } else {
        println!("n        {}", summary.n);
        println!("IoU      {:.4}", summary.iou);
        for (t, acc) in rec::THRESHOLDS.iter().zip(summary.acc) {
            println!("Acc@{t:<4} {acc:.4}");
        }
        println!("centre   {:.4}", summary.center);
    }
    Ok(())
}
