//! `--overlay` and `--heatmap`, shared by `generate` and `ground`.

use anyhow::{bail, Context, Result};
use nuwa::overlay::{self, BoxMark};
use nuwa::Generation;
use std::path::Path;

/// Fails before the model loads when an overlay was asked for but cannot be drawn or written.
pub fn check(out: Option<&Path>, image: Option<&Path>) -> Result<()> {
    let Some(out) = out else { return Ok(()) };
    if image.is_none() {
        bail!("--overlay needs --image: it is drawn on the original picture, which --pixel-values does not have");
    }
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("--overlay {}: directory {} does not exist", out.display(), dir.display());
    }
    Ok(())
}

/// Draws what `generation` did to `image` (or its saliency with `heatmap`), plus `bbox`, into `out`.
pub fn write(
    out: &Path,
    image: &Path,
    generation: &Generation,
    heatmap: bool,
    bbox: Option<BoxMark<'_>>,
) -> Result<()> {
    let (Some(report), Some(encoded)) = (&generation.vision, &generation.encoded) else {
        bail!("--overlay: the generation has no image to draw");
    };
    let original = nuwa::preprocess::load_image(image)?;
    let drawn = overlay::draw(&original, encoded, report, heatmap, bbox)?;
    drawn.save_png(out).context("--overlay")?;
    eprintln!("overlay written to {}", out.display());
    Ok(())
}
