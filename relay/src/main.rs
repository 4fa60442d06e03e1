use anyhow::Context;
use clap::Parser;

use wpex::cli::{Args, go_style_args};

fn main() -> anyhow::Result<()> {
    let args = Args::parse_from(go_style_args(std::env::args_os()));
    wpex_daemon::init_logging(args.log_format, if args.debug { "debug" } else { "info" });

    let workers = usize::from(args.workers);
    // One runtime thread per receive socket: a spare thread only adds wake-ups, and the core
    // is one lock anyway. Scans have a thread of their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(wpex::app::run(args, workers))?;
    Ok(())
}
