//! `nuwa serve`: load the model once, then answer OpenAI chat-completions requests until SIGINT or
//! SIGTERM (in-flight requests finish first).

use super::load_engine;
use crate::args::{ModelArgs, PruneArgs};
use anyhow::{Context, Result};
use clap::Args;
use nuwa_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (0.0.0.0 to accept other machines' connections).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model name clients send and /v1/models lists [default: the model directory's name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Requests that may wait while one is decoded; beyond that, 429 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub max_queue: usize,
    /// Seconds from accepting a request to its last token (504 past it).
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Largest request body accepted, in bytes (413 beyond; images travel base64-encoded inside it).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Largest image accepted, in pixels, checked from its header before decoding (Pillow's default).
    #[arg(long, default_value_t = nuwa::preprocess::DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// Serve `file://` image URLs from under this directory (refused otherwise).
    #[arg(long, value_name = "DIR")]
    pub allow_local_images: Option<PathBuf>,
    /// Seed for the random methods' defaults (a request's `pruning.seed` overrides it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The default pruning; each request may override any knob in its `pruning` object.
    #[command(flatten)]
    pub prune: PruneArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let pruning = args.prune.spec(args.seed)?;
    pruning.method()?;
    if let Some(dir) = &args.allow_local_images {
        anyhow::ensure!(dir.is_dir(), "--allow-local-images {}: not a directory", dir.display());
    }
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.model.model)
            .file_name()
            .map_or_else(|| args.model.model.clone(), |n| n.to_string_lossy().into_owned())
    });
    anyhow::ensure!(args.max_queue >= 1, "--max-queue must be at least 1");
    anyhow::ensure!(args.request_timeout >= 1, "--request-timeout must be at least 1 second");
    let engine = Arc::new(load_engine(&args.model)?);
    let config = ServerConfig {
        served_model_name: name,
        max_queue: args.max_queue,
        request_timeout: Duration::from_secs(args.request_timeout),
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        allow_local_images: args.allow_local_images.clone(),
        pruning,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let addr = SocketAddr::new(args.host, args.port);
        let server = Server::bind(engine, config, addr)
            .await
            .with_context(|| format!("--host/--port: cannot listen on {addr}"))?;
        eprintln!("serving {} on http://{}", args.model.model, server.local_addr()?);
        server.run(shutdown_signal()).await?;
        eprintln!("stopped");
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
