//! `nuwa generate`: answer one prompt, streaming text or printing one JSON object.

use super::load_engine;
use crate::args::GenerateArgs;
use anyhow::{bail, Result};
use nuwa::{GenerateRequest, ImageInput, Sampling};
use serde_json::json;
use std::io::Write;

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    super::overlay::check(args.overlay.as_deref(), args.image.as_deref())?;
    let method = args.prune.method(args.seed)?;
    let engine = load_engine(&args.model)?;
    let image = match (&args.image, &args.pixel_values) {
        (Some(p), _) => Some(ImageInput::Path(p.clone())),
        (None, Some(p)) => Some(nuwa::engine::read_pixel_values(p, engine.device())?),
        (None, None) => None,
    };
    let req = GenerateRequest {
        prompt: args.prompt.clone(),
        image,
        method,
        positions: args.prune.positions(),
        sampling: Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed },
        max_new_tokens: args.max_new_tokens,
        stop: args.stop.clone(),
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
    super::warn_capped_budget(&out);
    if let (Some(path), Some(image)) = (&args.overlay, &args.image) {
        super::overlay::write(path, image, &out, args.heatmap, None)?;
    }
    if args.json {
        let value = json!({
            "text": out.text,
            "tokens": out.tokens,
            "prompt_tokens": out.prompt_tokens,
            "stop_reason": out.stop_reason,
            "timings_ms": out.timings,
            "kv_cache_bytes": out.kv_cache_bytes,
            "vision": out.vision,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}
