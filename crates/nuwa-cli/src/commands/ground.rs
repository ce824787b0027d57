//! `nuwa ground`: referring-expression grounding with the box mapped back to the image.

use super::{load_engine, overlay};
use crate::args::{ModelArgs, PruneArgs};
use anyhow::{bail, Context, Result};
use nuwa::ground::{ground_box, GroundBox};
use nuwa::overlay::BoxMark;
use nuwa::{GenerateRequest, ImageInput, Sampling};
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GroundArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file (PNG, JPEG, WebP, BMP, GIF, TIFF).
    #[arg(long)]
    pub image: PathBuf,
    /// What to find, e.g. "the man in the red shirt"; asked with the standard RefCOCO prompt.
    #[arg(long)]
    pub expression: String,
    /// Stop after this many generated tokens (a box answer needs about 20).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Seed for `--stage2-rule random` (decoding is greedy, as in the standard harness).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// Draw what pruning kept and the answer's box over the image, written as a PNG.
    #[arg(long, value_name = "OUT.png")]
    pub overlay: Option<PathBuf>,
    /// With --overlay: draw the per-patch [CLS] saliency instead of what pruning kept.
    #[arg(long, requires = "overlay")]
    pub heatmap: bool,
    /// Print one JSON object (answer, box in three frames, what pruning kept, timings).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: GroundArgs) -> Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if args.expression.trim().is_empty() {
        bail!("--expression is empty; say what to find in the image");
    }
    overlay::check(args.overlay.as_deref(), Some(&args.image))?;
    let method = args.prune.method(args.seed)?;
    let engine = load_engine(&args.model)?;
    let req = GenerateRequest {
        prompt: engine.grounding_prompt(&args.expression),
        image: Some(ImageInput::Path(args.image.clone())),
        method,
        positions: args.prune.positions(),
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: args.seed },
        max_new_tokens: args.max_new_tokens,
        stop: Vec::new(),
    };
    let out = engine.generate(&req, &mut |_| {})?;
    super::warn_capped_budget(&out);
    let geometry = out.encoded.as_ref().and_then(|e| e.geometry).context("the engine returned no image geometry")?;
    let found = ground_box(&out.text, &geometry);
    if let Some(path) = &args.overlay {
        let bbox = found.map(|b| BoxMark { rect: b.original_pixels, label: &args.expression });
        overlay::write(path, &args.image, &out, args.heatmap, bbox)?;
    }
    if args.json {
        let value = json!({
            "text": out.text,
            "expression": args.expression,
            "tokens": out.tokens,
            "stop_reason": out.stop_reason,
            "image": { "width": geometry.width, "height": geometry.height },
            "box": found,
            "timings_ms": out.timings,
            "vision": out.vision,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", out.text);
        print_box(found.as_ref(), geometry.width, geometry.height);
    }
    Ok(())
}

fn print_box(found: Option<&GroundBox>, width: u32, height: u32) {
    let Some(b) = found else {
        println!("box: none in the answer (expected [x1, y1, x2, y2])");
        return;
    };
    let norm = |v: [f64; 4]| format!("[{:.3}, {:.3}, {:.3}, {:.3}]", v[0], v[1], v[2], v[3]);
    let p = b.original_pixels;
    println!("box, padded square (as parsed): {}", norm(b.square));
    println!("box, original (normalised):     {}", norm(b.original_normalized));
    println!(
        "box, original (pixels):         [{:.0}, {:.0}, {:.0}, {:.0}] of {width}x{height}",
        p[0], p[1], p[2], p[3]
    );
}
