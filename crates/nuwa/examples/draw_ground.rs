//! Draws a grounding picture for a given answer: runs the model on the image with the grounding
//! question, so the overlay shows what pruning kept for that question, but takes the box from
//! RESPONSE instead of the model's own answer. This is how `docs/ground.png` is made: the bundled
//! random-weight model cannot answer, and the picture should show a real box.
//!
//! ```text
//! cargo run -p nuwa --example draw_ground -- MODEL_DIR IMAGE EXPRESSION RESPONSE OUT.png [BUDGET]
//! ```

use nuwa::ground::{ground_box, prompt};
use nuwa::overlay::{self, BoxMark};
use nuwa::{Engine, GenerateRequest, ImageInput, LoadOptions, Method, NuwaConfig, Sampling};
use std::path::Path;

const USAGE: &str = "usage: draw_ground MODEL_DIR IMAGE EXPRESSION RESPONSE OUT.png [BUDGET (64)]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, expression, response, out, rest @ ..] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let budget = match rest {
        [] => 64,
        [b] => b.parse().map_err(|e| format!("BUDGET {b:?}: {e}"))?,
        _ => return Err(USAGE.into()),
    };
    let engine = Engine::load(Path::new(model), &LoadOptions::default())?;
    let request = GenerateRequest {
        prompt: prompt(expression),
        image: Some(ImageInput::Path(image.into())),
        method: Method::Nuwa(NuwaConfig { budget, ..NuwaConfig::default() }),
        positions: None,
        sampling: Sampling::default(),
        // Pruning is decided at prefill; the answer itself is not used.
        max_new_tokens: 1,
        stop: vec![],
    };
    let generation = engine.generate(&request, &mut |_| {})?;
    let (Some(report), Some(encoded)) = (&generation.vision, &generation.encoded) else {
        return Err("the generation has no image".into());
    };
    let geometry = encoded.geometry.ok_or("no image geometry")?;
    let found =
        ground_box(response, &geometry).ok_or_else(|| format!("RESPONSE {response:?} holds no [x1, y1, x2, y2]"))?;
    println!(
        "square {:?}\noriginal normalised {:?}\noriginal pixels {:?}",
        found.square, found.original_normalized, found.original_pixels
    );

    let original = nuwa::preprocess::load_image(Path::new(image))?;
    let bbox = BoxMark { rect: found.original_pixels, label: expression };
    overlay::draw(&original, encoded, report, false, Some(bbox))?.save_png(Path::new(out))?;
    println!("wrote {out}");
    Ok(())
}
