//! `nuwa ground`: referring-expression grounding with the box mapped back to the image.

use anyhow::{bail, Result};

#[derive(Debug, clap::Args)]
pub struct GroundArgs {}

pub fn run(_args: GroundArgs) -> Result<()> {
    bail!("nuwa ground is not available yet")
}
