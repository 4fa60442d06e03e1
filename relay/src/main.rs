use anyhow::Context;
use clap::Parser;

use wpex::cli::{Args, go_style_args};

fn main() -> anyhow::Result<()> {
    let args = Args::parse_from(go_style_args(std::env::args_os()));
    wpex_daemon::init_logging(args.log_format, if args.debug { "debug" } else { "info" });

    let workers = usize::from(args.workers);
    // Each receive socket has a thread of its own, and scans another: the runtime only runs
    // the timers, the signals and the metrics endpoint, which one thread does.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(wpex::app::run(args, workers))?;
    Ok(())
}
