//! The command line. Bad input is refused by clap with the flag named, before anything starts.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::access::Access;
use crate::wire::{DATA_MAX_LEN, DATA_MIN_LEN};

/// The relay keeps a session 180 s (WireGuard's REJECT_AFTER_TIME) and this benchmark does not
/// re-handshake, so warm-up and measurement must end well before.
pub const MAX_RUN_SECS: f64 = 170.0;

#[derive(Debug, Parser)]
#[command(
    name = "wpex-bench",
    version,
    about = "Measures a WireGuard relay's data plane on loopback: delivered rate, loss, latency, \
             CPU per packet and memory, beside a minimal forwarder run on the same machine",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The minimal forwarder, as started by the benchmark itself.
    #[command(hide = true)]
    Forwarder(ForwarderArgs),
}

#[derive(Debug, Args)]
pub struct ForwarderArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: Ipv4Addr,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The relay under test. Default: target/release/wpex under the workspace root.
    #[arg(long, value_name = "PATH")]
    pub relay: Option<PathBuf>,

    /// Also measure this binary, started with the original wpex's flags (`--bind 127.0.0.1
    /// --port N --broadcast-rate R`), for example a hand-built Go wpex.
    #[arg(long, value_name = "PATH")]
    pub baseline: Option<PathBuf>,

    /// Skip the minimal forwarder (and the ratios to it).
    #[arg(long)]
    pub no_forwarder: bool,

    /// Peer pairs, each with its own two UDP sockets.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub pairs: u32,

    /// Sessions per pair.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sessions: u32,

    /// Size of each transport data datagram in bytes (the whole UDP payload, WireGuard header
    /// included).
    #[arg(long, default_value_t = 1420, value_parser = clap::value_parser!(u32).range(DATA_MIN_LEN as i64..=DATA_MAX_LEN as i64))]
    pub size: u32,

    /// Datagrams per second over all flows (both directions with --both-ways). Default: flat out.
    #[arg(long, value_name = "PPS", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub rate: Option<u64>,

    /// Seconds of the measured phase (fractions allowed).
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = positive_secs)]
    pub duration: Duration,

    /// Seconds of traffic before measuring, not counted.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = secs)]
    pub warmup: Duration,

    /// Seconds to wait after the last send for datagrams still in flight.
    #[arg(long, default_value = "0.3", value_name = "SECS", value_parser = secs)]
    pub drain: Duration,

    /// Send transport data B->A too, not only A->B.
    #[arg(long)]
    pub both_ways: bool,

    /// Send each batch of one flow as a UDP GSO message instead of `sendmmsg`: the train a
    /// NIC's GRO hands a relay that asks for it on a real network, which loopback only
    /// delivers when the sender used GSO. Targets without GRO receive the datagrams one by one.
    #[arg(long)]
    pub gso: bool,

    /// `--broadcast-rate` given to our relay and the baseline: broadcast copies of handshake
    /// initiations per second. The default 1 keeps setting up many sessions from costing
    /// O(sessions x endpoints) broadcast copies; 0 is unlimited.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub broadcast_rate: u32,

    /// `--source-rate` given to our relay: initiations per second per source IP. A pair sets
    /// up all its sessions from one address, so the relay's default (20/s, burst 100) would
    /// hold up more than 100 sessions per pair; 0 is unlimited.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub source_rate: u32,

    /// Who the targets let in: `open`, or `allow`, an allow-list of --keys keys (handshakes
    /// carry a valid mac1 and answer the relay's cookie round). Our relay gets the list as
    /// `--allow-file`, the baseline as `--allow KEY` per key; the forwarder ignores it.
    #[arg(long, value_enum, default_value_t = Access::Open)]
    pub access: Access,

    /// Allow mode: keys in the allow-list. Each peer holds one and the rest pad the list;
    /// raised to two per pair when that is more.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keys: u32,

    /// Another argument for our relay (repeat for more), e.g. `--relay-arg=--workers=2`.
    #[arg(long = "relay-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,

    /// Where to write the JSON report. Default: target/bench/wpex-bench.json under the
    /// workspace root. Target logs go to a `logs` directory beside it.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Run a matrix of sizes x pairs x sessions x access modes instead of one measurement (see
    /// --matrix-sizes, --matrix-pairs, --matrix-sessions, --matrix-access).
    #[arg(long)]
    pub matrix: bool,

    /// Matrix: datagram sizes.
    #[arg(long, value_delimiter = ',', default_value = "128,1420", value_parser = clap::value_parser!(u32).range(DATA_MIN_LEN as i64..=DATA_MAX_LEN as i64))]
    pub matrix_sizes: Vec<u32>,

    /// Matrix: peer pairs.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub matrix_pairs: Vec<u32>,

    /// Matrix: sessions in total (spread over the pairs, at least one per pair). The full
    /// matrix of the issue is 1,10,100,1000,10000,100000.
    #[arg(long, value_delimiter = ',', default_value = "1,10000", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub matrix_sessions: Vec<u32>,

    /// Matrix: access modes, each measured next to the other (allow with --keys keys).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "open,allow")]
    pub matrix_access: Vec<Access>,
}

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=MAX_RUN_SECS).contains(&v) {
        return Err(format!("must be between 0 and {MAX_RUN_SECS} seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive_secs(s: &str) -> Result<Duration, String> {
    let d = secs(s)?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 0.01 seconds".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wpex-bench").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_lists_parse() {
        let c = parse("").expect("defaults");
        assert!(c.command.is_none());
        assert_eq!((c.run.pairs, c.run.sessions, c.run.size), (1, 1, 1420));
        assert_eq!(c.run.rate, None);
        assert_eq!(c.run.duration, Duration::from_secs(5));
        let c = parse("--matrix --matrix-sizes 64,1420 --duration 0.5 --relay-arg=--workers=2")
            .expect("matrix");
        assert_eq!(c.run.matrix_sizes, vec![64, 1420]);
        assert_eq!(c.run.duration, Duration::from_millis(500));
        assert_eq!(c.run.relay_args, vec!["--workers=2"]);
        assert_eq!(c.run.matrix_access, vec![Access::Open, Access::Allow]);
        assert_eq!((c.run.access, c.run.keys), (Access::Open, 1000));
        let c = parse("--access allow --keys 5000 --matrix-access allow").expect("allow");
        assert_eq!((c.run.access, c.run.keys), (Access::Allow, 5000));
        assert_eq!(c.run.matrix_access, vec![Access::Allow]);
        let c = parse("forwarder --port 4000").expect("forwarder");
        assert!(matches!(
            c.command,
            Some(Command::Forwarder(ForwarderArgs { port: 4000, .. }))
        ));
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        for (line, flag) in [
            ("--size 31", "--size"),
            ("--size 70000", "--size"),
            ("--pairs 0", "--pairs"),
            ("--rate 0", "--rate"),
            ("--duration 0", "--duration"),
            ("--duration 500", "--duration"),
            ("--warmup=-1", "--warmup"),
            ("--duration x", "--duration"),
            ("--access closed", "--access"),
            ("--keys 0", "--keys"),
            ("--matrix-access open,shut", "--matrix-access"),
        ] {
            let err = parse(line).expect_err(line).to_string();
            assert!(err.contains(flag), "{line}: {err}");
        }
    }
}
