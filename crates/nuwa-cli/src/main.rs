//! `nuwa`: run, measure and inspect LLaVA with visual-token pruning. Parses flags, calls the library,
//! prints text or JSON.

mod args;
mod commands;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    if let Err(err) = commands::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
