use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use wpex::cli::{Args, go_style_args};
use wpex::keys::AllowedKeys;
use wpex::relay::{Access, Config};

fn main() -> anyhow::Result<()> {
    let args = Args::parse_from(go_style_args(std::env::args_os()));
    let level = if args.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let access = if args.allow.is_empty() {
        tracing::warn!("no --allow keys: the relay is open to anyone (see --broadcast-rate)");
        Access::Open
    } else {
        for key in &args.allow {
            tracing::debug!(%key, "allow wireguard public key");
        }
        Access::AllowList(AllowedKeys::new(args.allow.iter().copied()))
    };
    let config = Config {
        access,
        broadcast_rate: args.broadcast_rate,
        source_rate: args.source_rate,
        ..Config::default()
    };
    let workers = args
        .workers
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(wpex::server::run(config, &args.bind, args.port, workers))?;
    Ok(())
}
