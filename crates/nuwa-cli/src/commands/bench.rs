//! `nuwa bench`: prefill latency, FLOPs and KV-cache memory, pruned vs unpruned.

use anyhow::{bail, Result};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<()> {
    bail!("nuwa bench is not available yet")
}
