//! `wpex-bench`: the relay's data plane measured on loopback, beside a yardstick from the same
//! run.
//!
//! # Run it
//!
//! From the workspace root, with both binaries built in release mode (a debug generator cannot
//! keep up):
//!
//! ```sh
//! cargo build --release -p wpex
//! cargo run --release -p wpex-bench -- --pairs 64 --size 1420 --rate 40000 --duration 5
//! cargo run --release -p wpex-bench -- --pairs 64 --size 1420 --duration 5   # flat out
//! cargo run --release -p wpex-bench -- --pairs 64 --size 1420 --rate 40000 --duration 5 \
//!     --access allow   # allow-list mode, 1,000 keys (--keys N)
//! ```
//!
//! The relay defaults to `target/release/wpex` under the workspace root; with `CARGO_TARGET_DIR`
//! set, pass `--relay $CARGO_TARGET_DIR/release/wpex`. `--baseline PATH` adds a third target
//! started with the original wpex's flags, such as a Go wpex built by hand (the benchmark never
//! fetches or builds one). On a shared machine, prefix the command with `nice -n 19`; the targets
//! inherit it. `--help` lists every flag.
//!
//! `--matrix` runs sizes 128 and 1420 × 1, 64 and 1024 pairs × 1 and 10,000 sessions in total,
//! each in open mode and then in allow-list mode with 1,000 keys (24 cells, about 7 minutes at
//! the default 5 s). The issue's full matrix is
//! `--matrix --matrix-sessions 1,10,100,1000,10000,100000`: 56 distinct cells, since every pair
//! has at least one session (about 15 minutes). Sizes, pairs, sessions and modes can be changed
//! with `--matrix-sizes`, `--matrix-pairs`, `--matrix-sessions` and `--matrix-access`.
//!
//! `cargo test -p wpex-bench` runs 1-second smoke tests, open and allow-list mode, against
//! `target/debug/wpex` (or `WPEX_BIN`), skipped with a message if neither exists.
//!
//! # What it does
//!
//! For each target in turn (our relay, then the minimal forwarder, then the baseline):
//!
//! 1. Starts it as a child process with `--bind 127.0.0.1 --port N` on a free port (our relay
//!    also gets `--broadcast-rate 1 --source-rate 0`, the baseline `--broadcast-rate 1`; see
//!    below). Its output goes to `logs/<target>.log` beside the JSON report. In allow-list mode
//!    (`--access allow`) our relay gets `--allow-file keys/allowed-keys`, written beside the
//!    report, and the baseline `--allow KEY` for each key; the forwarder ignores keys.
//! 2. Opens two UDP sockets per peer pair (A and B), each on its own loopback address
//!    (127.1.x.y), and sets up `--sessions` sessions per pair: A sends a handshake initiation
//!    (148 bytes, random sender index), B a response (92 bytes, its own index, receiver index =
//!    A's); a session counts once A has the response back. In allow-list mode A and B hold
//!    two of the `--keys` allowed keys, the initiation carries a mac1 for B's key and the
//!    response one for A's, and each peer answers the relay's cookie reply to its first
//!    handshake by sending it again with a mac2 (`setup.rs`). The first session of every pair
//!    is set up before the others, so each address takes one cookie round.
//! 3. Sends transport data (type 4, `--size` bytes in all) A→B (and B→A with `--both-ways`),
//!    addressed by receiver index, in `sendmmsg` batches of up to 32, flat out or at `--rate`,
//!    for `--warmup` then `--duration` seconds. Each datagram carries a sequence number and its
//!    send time; the receiver reads with `recvmmsg` and epoll.
//! 4. Reports, per target: sent and delivered datagrams per second, Gbit/s of delivered UDP
//!    payload, loss, latency p50/p99/p999, the target's CPU time per delivered datagram (all its
//!    threads, `/proc/PID/task/*/schedstat`, read when the measured phase starts and after the
//!    drain pause), its RSS at the end, the setup time and the cookie rounds answered in setup.
//!    Then "ours / forwarder" (and the baseline's ratios) from the same run.
//!
//! The table goes to stdout. The JSON report (`--json PATH`, default `target/bench/wpex-bench.json`
//! under the workspace root) has the parameters, the machine (CPUs, kernel, load average,
//! `rmem_max`), the git commit and every figure, including where datagrams were lost
//! (`target_socket_drops`, `generator_socket_drops`), the generator's CPU use, duplicates and
//! send errors. The process exits non-zero if any measurement failed.
//!
//! # Reading the figures
//!
//! - **CPU µs/pkt** is the figure to compare across commits, against the forwarder's from the
//!   same run rather than against another machine's. At low rates it is dominated by one wake-up
//!   per batch, so compare runs at the same rate.
//! - **Paced** runs (`--rate`) below what every target can forward should show no loss; their
//!   latency is the relay's added delay plus scheduling. **Flat out**, the generator offers more
//!   than a relay can take and the surplus is dropped at the relay's socket
//!   (`target_socket_drops`). Delivered pps is then the relay's ceiling on this machine, and the
//!   latency is mostly time spent in a full 4 MiB socket buffer.
//! - The generator can take one to two cores flat out (`generator_cpu_percent`); on a 2-core
//!   machine it competes with the target, so flat-out figures understate what the relay does
//!   alone. Anything else running skews every figure, CPU µs/pkt least; the JSON
//!   keeps the load average at the start.
//!
//! # Why these choices
//!
//! - **A yardstick in every run.** Loopback figures depend on the CPU, the kernel and whatever
//!   else runs; the minimal forwarder (`forwarder.rs`) is the floor for this design on this
//!   machine, measured the same way a moment apart.
//! - **Child processes.** /proc gives one process's CPU time exactly, apart from the generator.
//! - **`--source-rate 0` for our relay.** A pair sets up all its sessions from one address and
//!   the relay accepts 20 initiations a second per source IP (burst 100), which would stall
//!   setting up more than 100 sessions per pair. The original has no such limit.
//! - **An address per peer.** Peers on a network have addresses of their own, and allow-list
//!   mode needs them: the relay allows each source IP 2 full scans of the allow-list a second
//!   (burst 10), so 64 pairs on 127.0.0.1 would take a minute to set up.
//! - **Allow-list mode with the relay's defaults.** Each new address costs the relay a full
//!   scan of the allow-list (one mac1 per key), and first-time sources get a quarter of
//!   `--scan-budget` (1,000,000 mac1 a second): 64 pairs with 1,000 keys set up in a few tens
//!   of milliseconds, but 1024 pairs (2,048 keys, two per pair) take about 18 s, which
//!   `setup_secs` shows. `--relay-arg=--scan-budget=0` takes the limit out. Our relay gets the
//!   keys in a file, as a deployment with many keys would; the relay re-reads that file on any
//!   change in its directory, so the file has a directory of its own.
//! - **`--broadcast-rate 1`.** In open mode every initiation is broadcast to every other known
//!   endpoint, so setting up S sessions between E endpoints costs up to S × E copies (64 pairs
//!   × 1000 sessions: 8 million). Only the handshake phase is affected.
//! - **Sessions live 180 s in the relay** and the benchmark does not re-handshake, so warm-up
//!   plus duration is capped at 170 s.
//! - Our relay holds at most 262,144 indices (two per session) and 65,536 endpoints; beyond,
//!   setup fails and the report says so.
//!
//! # Not done yet
//!
//! - **GSO/GRO**: the generator sends without UDP GSO, so the relay never gets GRO trains.
//! - **Rekeying** mid-run, roaming, and IPv6.
//! - The full matrix is not the default (see above), and there is no comparison script yet:
//!   compare JSON files with `jq`.

mod access;
mod cli;
mod forwarder;
mod hist;
mod procfs;
mod report;
mod setup;
mod sys;
mod target;
mod traffic;
mod wire;

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::access::{Access, AllowList};
use crate::cli::{Cli, Command, MAX_RUN_SECS, RunArgs};
use crate::report::{Cell, Figures, Git, Machine, Params, Report, TargetReport};
use crate::target::{Kind, Running, Spec};
use crate::traffic::{Plan, TargetRef};

/// Indices our relay's table holds (`Config::max_indices`).
const RELAY_MAX_INDICES: usize = 1 << 18;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Forwarder(a)) => Ok(forwarder::run(a.bind, a.port)?),
        None => bench(&cli.run),
    }
}

/// The workspace this binary was built from, if it is still there; else the current directory.
fn workspace_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match built.canonicalize() {
        Ok(root) if root.join("Cargo.toml").is_file() => root,
        _ => PathBuf::from("."),
    }
}

fn relay_path(args: &RunArgs, root: &Path) -> Result<PathBuf> {
    let path = args
        .relay
        .clone()
        .unwrap_or_else(|| root.join("target/release/wpex"));
    if path.is_file() {
        // Absolute, so the report says which binary was measured wherever it was run from.
        return Ok(path.canonicalize().unwrap_or(path));
    }
    let hint = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => format!(
            " (CARGO_TARGET_DIR is set, so it is built as {})",
            Path::new(&dir).join("release/wpex").display()
        ),
        None => String::new(),
    };
    bail!(
        "relay binary {} not found: build it with `cargo build --release -p wpex` in {}, \
         or pass --relay PATH{hint}",
        path.display(),
        root.display()
    )
}

/// Raises the open-file limit to what `pairs` need (two sockets each), or explains.
fn ensure_file_limit(pairs: usize) -> Result<()> {
    let need = (pairs * 2 + 256) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max < need {
        bail!(
            "{pairs} pairs need {need} open files but the hard limit is {}: raise it (ulimit -Hn) \
             or use fewer --pairs",
            lim.rlim_max
        );
    }
    lim.rlim_cur = need;
    // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one is allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising RLIMIT_NOFILE");
    }
    Ok(())
}

/// The first line `program --version` prints, if it answers within 2 s.
fn version_of(program: &Path) -> Option<String> {
    let mut child = Process::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

fn git_info(root: &Path) -> Option<Git> {
    let run = |args: &[&str]| {
        Process::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    Some(Git {
        commit: run(&["rev-parse", "HEAD"])?,
        dirty: run(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty()),
    })
}

fn machine() -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cpu_model: procfs::cpu_model(),
        kernel: procfs::read_value("/proc/sys/kernel/osrelease"),
        loadavg_at_start: procfs::read_value("/proc/loadavg"),
        rmem_max: procfs::read_value("/proc/sys/net/core/rmem_max").and_then(|v| v.parse().ok()),
    }
}

/// One point of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    access: Access,
    size: usize,
    pairs: usize,
    per_pair: usize,
}

fn shapes(args: &RunArgs) -> Vec<Shape> {
    if !args.matrix {
        return vec![Shape {
            access: args.access,
            size: args.size as usize,
            pairs: args.pairs as usize,
            per_pair: args.sessions as usize,
        }];
    }
    let mut out: Vec<Shape> = Vec::new();
    for &size in &args.matrix_sizes {
        for &pairs in &args.matrix_pairs {
            for &total in &args.matrix_sessions {
                // Access modes innermost, so each allow cell follows its open one.
                for &access in &args.matrix_access {
                    let shape = Shape {
                        access,
                        size: size as usize,
                        pairs: pairs as usize,
                        per_pair: (total as usize).div_ceil(pairs as usize).max(1),
                    };
                    if !out.contains(&shape) {
                        out.push(shape);
                    }
                }
            }
        }
    }
    out
}

/// `spec` for one cell: with an allow-list, our relay reads it from `key_file` as a deployment
/// with many keys would, the baseline gets the original's `--allow KEY` per key, and the
/// forwarder ignores it.
fn with_access(spec: &Spec, allow: Option<&AllowList>, key_file: &Path) -> Spec {
    let mut spec = spec.clone();
    if let Some(list) = allow {
        match spec.kind {
            Kind::Ours => spec.after.extend(["--allow-file".into(), key_file.into()]),
            Kind::Baseline => spec
                .after
                .extend(list.allow_args().into_iter().map(Into::into)),
            Kind::Forwarder => {}
        }
    }
    spec
}

/// Starts one target, sets up the sessions, measures, and stops it.
fn measure(
    spec: &Spec,
    shape: Shape,
    allow: Option<&AllowList>,
    plan: &Plan,
    logs: &Path,
) -> Result<(String, Figures)> {
    let mut running = Running::start(spec, logs)?;
    let command = running.command.clone();
    let mut rng = StdRng::from_entropy();
    let pairs = setup::open_pairs(shape.pairs, running.addr, allow)?;
    let started = Instant::now();
    let setup = setup::establish(&pairs, shape.per_pair, &mut rng)
        .with_context(|| format!("setting up sessions with {}", spec.kind.name()))?;
    let setup_secs = started.elapsed().as_secs_f64();
    let sessions = setup.sessions;
    setup::drain(&pairs)?;
    let target = TargetRef {
        pid: running.pid,
        port: running.addr.port(),
    };
    let m = traffic::run(&pairs, &sessions, plan, target, &mut rng);
    // A target that died explains any error of the run better than the run's own error.
    running.check_alive()?;
    let m = m.with_context(|| format!("measuring {}", spec.kind.name()))?;
    let rss = procfs::rss_kib(running.pid)?;
    let established = sessions.iter().map(Vec::len).sum();
    Ok((
        command,
        Figures::new(
            &m,
            shape.size,
            established,
            setup_secs,
            setup.cookie_rounds,
            rss,
        ),
    ))
}

/// Refuses a run longer than the relay keeps sessions: the benchmark does not re-handshake.
fn check_run_length(args: &RunArgs) -> Result<()> {
    if (args.warmup + args.duration).as_secs_f64() > MAX_RUN_SECS {
        bail!(
            "--warmup plus --duration must stay under {MAX_RUN_SECS} s: the relay expires \
             sessions after 180 s and the benchmark does not re-handshake"
        );
    }
    Ok(())
}

/// The `--baseline` binary, absolute, if one is given and exists.
fn baseline_path(args: &RunArgs) -> Result<Option<PathBuf>> {
    Ok(match &args.baseline {
        Some(b) if !b.is_file() => bail!("baseline binary {} not found", b.display()),
        Some(b) => Some(b.canonicalize().unwrap_or_else(|_| b.clone())),
        None => None,
    })
}

/// Warns of every shape that needs more indices than our relay holds.
fn warn_index_limit(shapes: &[Shape]) {
    for s in shapes {
        if s.pairs * s.per_pair * 2 > RELAY_MAX_INDICES {
            eprintln!(
                "warning: {} pairs x {} sessions need {} indices; our relay holds {RELAY_MAX_INDICES}, \
                 so its setup will fail",
                s.pairs,
                s.per_pair,
                s.pairs * s.per_pair * 2
            );
        }
    }
}

/// The targets, in the order they are measured: our relay, the forwarder unless
/// `--no-forwarder`, and the baseline if there is one.
fn specs(args: &RunArgs, relay: &Path, baseline: Option<&Path>) -> Result<Vec<Spec>> {
    let broadcast = [
        "--broadcast-rate".to_owned(),
        args.broadcast_rate.to_string(),
    ];
    let mut specs = vec![Spec {
        kind: Kind::Ours,
        program: relay.to_path_buf(),
        before: vec![],
        after: broadcast
            .iter()
            .cloned()
            .chain(["--source-rate".to_owned(), args.source_rate.to_string()])
            .chain(args.relay_args.iter().cloned())
            .map(Into::into)
            .collect(),
    }];
    if !args.no_forwarder {
        specs.push(Spec {
            kind: Kind::Forwarder,
            program: std::env::current_exe().context("finding this program's own path")?,
            before: vec!["forwarder".into()],
            after: vec![],
        });
    }
    if let Some(b) = baseline {
        specs.push(Spec {
            kind: Kind::Baseline,
            program: b.to_path_buf(),
            before: vec![],
            after: broadcast.iter().map(Into::into).collect(),
        });
    }
    Ok(specs)
}

/// The traffic for a cell of datagrams of `size` bytes.
fn plan(args: &RunArgs, size: usize) -> Plan {
    Plan {
        size,
        rate: args.rate,
        warmup: args.warmup,
        duration: args.duration,
        drain: args.drain,
        both_ways: args.both_ways,
        gso: args.gso,
    }
}

/// The report before any cell: what was run, where, and how.
fn new_report(args: &RunArgs, root: &Path, relay: &Path, baseline: Option<&Path>) -> Report {
    Report {
        tool: "wpex-bench",
        version: env!("CARGO_PKG_VERSION"),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        git: git_info(root),
        machine: machine(),
        params: Params {
            rate_pps: args.rate,
            duration_secs: args.duration.as_secs_f64(),
            warmup_secs: args.warmup.as_secs_f64(),
            drain_secs: args.drain.as_secs_f64(),
            both_ways: args.both_ways,
            gso: args.gso,
            broadcast_rate: args.broadcast_rate,
            source_rate: args.source_rate,
            relay: relay.display().to_string(),
            relay_args: args.relay_args.clone(),
            baseline: baseline.map(|b| b.display().to_string()),
            forwarder: !args.no_forwarder,
            matrix: args.matrix,
            access: if args.matrix {
                args.matrix_access.clone()
            } else {
                vec![args.access]
            },
            keys: args.keys,
        },
        cells: Vec::new(),
    }
}

/// The line above the table: what is measured, and how.
fn print_title(args: &RunArgs, relay: &Path) {
    println!(
        "wpex-bench: {} on loopback, {}, warm-up {:?}, measured {:?}{}{}",
        relay.display(),
        args.rate
            .map_or_else(|| "flat out".to_owned(), |r| format!("{r} pps")),
        args.warmup,
        args.duration,
        if args.both_ways { ", both ways" } else { "" },
        if args.gso { ", GSO trains" } else { "" }
    );
}

/// Measures one target, `spec` as this cell runs it; a failure is reported, not returned.
fn measure_target(
    spec: &Spec,
    version: &Option<String>,
    shape: Shape,
    allow: Option<&AllowList>,
    plan: &Plan,
    logs: &Path,
) -> TargetReport {
    match measure(spec, shape, allow, plan, logs) {
        Ok((command, figures)) => TargetReport {
            target: spec.kind,
            command,
            version: version.clone(),
            error: None,
            figures: Some(figures),
        },
        Err(e) => TargetReport {
            target: spec.kind,
            command: spec.display(0),
            version: version.clone(),
            error: Some(format!("{e:#}")),
            figures: None,
        },
    }
}

/// Notes under a target's row when the figures are the generator's doing: it sent less than
/// `--rate` asked for, or its own sockets dropped datagrams.
fn print_notes(rate: Option<u64>, target: &TargetReport) {
    if let (Some(rate), Some(f)) = (rate, &target.figures)
        && f.offered_pps < rate as f64 * 0.95
    {
        println!(
            "  note: the generator sent only {:.0} of the {rate} pps asked for \
             (generator CPU {:.0}% of a core)",
            f.offered_pps, f.generator_cpu_percent
        );
    }
    if let Some(f) = &target.figures
        && f.generator_socket_drops * 200 > f.sent
    {
        println!(
            "  note: the generator's own sockets dropped {} datagrams: part of the loss \
             is the generator's, not the target's",
            f.generator_socket_drops
        );
    }
}

/// Measures every target on one cell, printing a row for each (and notes, and failures on
/// stderr), then the ratios.
fn measure_cell(
    args: &RunArgs,
    shape: Shape,
    allow: Option<&AllowList>,
    targets: &[(Spec, Option<String>)],
    key_file: &Path,
    logs: &Path,
) -> Cell {
    let mut cell = Cell {
        access: shape.access,
        keys: allow.map(AllowList::len),
        size: shape.size,
        pairs: shape.pairs,
        sessions_per_pair: shape.per_pair,
        sessions: shape.pairs * shape.per_pair,
        targets: Vec::new(),
        ratios: Vec::new(),
    };
    for (spec, version) in targets {
        let spec = &with_access(spec, allow, key_file);
        let target = measure_target(spec, version, shape, allow, &plan(args, shape.size), logs);
        println!("{}", report::row(&cell, &target));
        if let Some(e) = &target.error {
            eprintln!("  {} failed: {e}", spec.kind.name());
        }
        print_notes(args.rate, &target);
        cell.targets.push(target);
    }
    cell.ratios = report::ratios(&cell.targets);
    for r in &cell.ratios {
        println!("{}", report::ratio_line(r));
    }
    cell
}

fn bench(args: &RunArgs) -> Result<()> {
    check_run_length(args)?;
    let root = workspace_root();
    let relay = relay_path(args, &root)?;
    let baseline = baseline_path(args)?;
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| root.join("target/bench/wpex-bench.json"));
    let out_dir = json
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let logs = out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let shapes = shapes(args);
    let max_pairs = shapes.iter().map(|s| s.pairs).max().unwrap_or(1);
    ensure_file_limit(max_pairs)?;
    warn_index_limit(&shapes);
    let specs = specs(args, &relay, baseline.as_deref())?;
    let targets: Vec<(Spec, Option<String>)> = specs
        .into_iter()
        .map(|s| {
            let version = version_of(&s.program);
            (s, version)
        })
        .collect();
    let mut report = new_report(args, &root, &relay, baseline.as_deref());

    print_title(args, &relay);
    println!("{}", report::header());
    let mut failures = 0;
    // In a directory of its own: the relay re-reads its key file on any change beside it.
    let key_file = out_dir.join("keys/allowed-keys");
    let mut rng = StdRng::from_entropy();
    for shape in shapes {
        let allow = (shape.access == Access::Allow)
            .then(|| AllowList::random(args.keys as usize, shape.pairs, &mut rng));
        if let Some(list) = &allow {
            list.write(&key_file)?;
        }
        let cell = measure_cell(args, shape, allow.as_ref(), &targets, &key_file, &logs);
        failures += cell.targets.iter().filter(|t| t.error.is_some()).count();
        report.cells.push(cell);
        // Written after every cell, so a long matrix interrupted midway keeps what it measured.
        report::write_json(&json, &report)?;
    }
    println!("JSON: {}", json.display());
    if failures > 0 {
        bail!(
            "{failures} measurement(s) failed; see above and the logs in {}",
            logs.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn run_args(line: &str) -> RunArgs {
        Cli::try_parse_from(std::iter::once("wpex-bench").chain(line.split_whitespace()))
            .expect("parses")
            .run
    }

    #[test]
    fn the_matrix_puts_each_allow_cell_after_its_open_one() {
        let matrix = "--matrix --matrix-sizes 128 --matrix-pairs 1,64 --matrix-sessions 1";
        let got: Vec<(Access, usize)> = shapes(&run_args(matrix))
            .iter()
            .map(|s| (s.access, s.pairs))
            .collect();
        assert_eq!(
            got,
            [
                (Access::Open, 1),
                (Access::Allow, 1),
                (Access::Open, 64),
                (Access::Allow, 64)
            ]
        );
        let single = shapes(&run_args("--access allow --pairs 3"));
        assert_eq!(single.len(), 1);
        assert_eq!((single[0].access, single[0].pairs), (Access::Allow, 3));
    }

    #[test]
    fn each_target_gets_the_allow_list_its_own_way() {
        let list = AllowList::random(3, 1, &mut StdRng::seed_from_u64(1));
        let spec = |kind| Spec {
            kind,
            program: "wpex".into(),
            before: vec![],
            after: vec!["--broadcast-rate".into(), "1".into()],
        };
        let file = Path::new("/k/allowed");
        let added = |kind| with_access(&spec(kind), Some(&list), file).after[2..].to_vec();
        assert_eq!(
            added(Kind::Ours),
            ["--allow-file", "/k/allowed"].map(OsString::from)
        );
        let baseline = added(Kind::Baseline);
        assert_eq!(baseline.len(), 6, "--allow KEY for each of 3 keys");
        assert!(baseline.iter().step_by(2).all(|a| a == "--allow"));
        assert!(added(Kind::Forwarder).is_empty());
        assert_eq!(
            with_access(&spec(Kind::Ours), None, file).after.len(),
            2,
            "open mode adds nothing"
        );
    }
}
