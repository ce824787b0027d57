//! One module per subcommand; this file dispatches and holds what they share.

pub mod bench;
pub mod eval;
pub mod generate;
pub mod ground;
mod overlay;
pub mod score;
pub mod serve;

use crate::args::{Cli, Command, DTypeArg, DeviceArg, ModelArgs, ScoreCommand};
use anyhow::{Context, Result};
use nuwa::{Engine, LoadOptions};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Ground(args) => ground::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Score(ScoreCommand::Rec { predictions, json }) => score::rec(&predictions, json),
        Command::Serve(args) => serve::run(args),
    }
}

pub fn dtype(arg: DTypeArg) -> candle_core::DType {
    match arg {
        DTypeArg::F32 => candle_core::DType::F32,
        DTypeArg::F16 => candle_core::DType::F16,
        DTypeArg::Bf16 => candle_core::DType::BF16,
    }
}

pub fn device(arg: DeviceArg) -> Result<candle_core::Device> {
    Ok(match arg {
        DeviceArg::Cpu => candle_core::Device::Cpu,
        DeviceArg::Cuda => candle_core::Device::new_cuda(0)
            .context("--device cuda: no CUDA device (build with `--features cuda` on a machine with a GPU)")?,
    })
}

/// Says on stderr when the budget asked for was above the image's tokens (the JSON reports both).
pub fn warn_capped_budget(out: &nuwa::Generation) {
    if let Some(v) = &out.vision {
        if let (Some(asked), Some(ran)) = (v.budget_requested, v.budget) {
            eprintln!("note: --budget {asked} is above this image's {ran} vision tokens; ran with {ran}");
        }
    }
}

pub fn load_engine(args: &ModelArgs) -> Result<Engine> {
    let opts = LoadOptions {
        dtype: dtype(args.dtype),
        device: device(args.device)?,
        max_pixels: args.max_pixels,
        quantize: args.quantize.map(|q| q.format()),
        ..LoadOptions::default()
    };
    let dir = nuwa::checkpoint::resolve(&args.model)?;
    Ok(Engine::load(&dir, &opts)?)
}
