//! `nuwa`: run, measure and inspect vision-language models with visual-token pruning. Parses flags,
//! calls the library, prints text or JSON.

mod args;
mod commands;

use clap::Parser;

fn main() {
    nuwa::keep_freed_memory();
    let cli = args::Cli::parse();
    if let Err(err) = commands::run(cli) {
        eprintln!("error: {}", flags_for_fields(&format!("{err:#}")));
        std::process::exit(1);
    }
}

/// The library names request parameters as its API spells them, in backticks (`` `max_new_tokens` ``);
/// on the command line they are flags.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("budget", "--budget"),
    ("budgets", "--budgets"),
    ("configs", "--prune"),
    ("data", "--data"),
    ("distance", "--distance"),
    ("dtype", "--dtype"),
    ("image_size", "--image-size"),
    ("keep", "--keep-file"),
    ("llm_layers", "--llm-layers"),
    ("max_new_tokens", "--max-new-tokens"),
    ("max_pixels", "--max-pixels"),
    ("method", "--prune"),
    ("on_error", "--on-error"),
    ("out", "--out"),
    ("pillar_quantile", "--pillar-quantile"),
    ("pixel_values", "--pixel-values"),
    ("preset", "--preset"),
    ("prompt", "--prompt"),
    ("prune", "--prune"),
    ("resume", "--resume"),
    ("shard", "--shard"),
    ("stage1_ratio", "--stage1-ratio"),
    ("stage2_layer", "--stage2-layer"),
    ("stage2_ratio", "--stage2-ratio"),
    ("stop", "--stop"),
    ("temperature", "--temperature"),
    ("top_n", "--top-n"),
    ("top_p", "--top-p"),
    ("vision_layers", "--vision-layers"),
];

fn flags_for_fields(message: &str) -> String {
    FIELD_FLAGS.iter().fold(message.to_owned(), |m, (field, flag)| m.replace(&format!("`{field}`"), flag))
}
