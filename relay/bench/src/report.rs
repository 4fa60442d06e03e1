//! The results: an aligned table printed as each measurement finishes, and a JSON file with the
//! parameters, the machine and every figure, so that runs on different commits can be compared
//! (`jq '.cells[].targets[] | {target, cpu: .figures.cpu_us_per_packet}'`).

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::access::Access;
use crate::target::Kind;
use crate::traffic::Measurement;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot encode the report: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub started_unix: u64,
    pub git: Option<Git>,
    pub machine: Machine,
    pub params: Params,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
pub struct Git {
    pub commit: String,
    /// Uncommitted changes in the work tree.
    pub dirty: bool,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    /// `/proc/loadavg` before the first measurement: other work on the machine skews results.
    pub loadavg_at_start: Option<String>,
    /// `net.core.rmem_max`: caps every socket's receive buffer, the relay's included.
    pub rmem_max: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub rate_pps: Option<u64>,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub drain_secs: f64,
    pub both_ways: bool,
    /// Batches left the generator as UDP GSO messages (`--gso`).
    pub gso: bool,
    pub broadcast_rate: u32,
    pub source_rate: u32,
    pub relay: String,
    pub relay_args: Vec<String>,
    pub baseline: Option<String>,
    pub forwarder: bool,
    pub matrix: bool,
    /// The access modes measured: `--access`, or `--matrix-access` with `--matrix`.
    pub access: Vec<Access>,
    /// `--keys`: allow-list size asked for (a cell's `keys` says what it got).
    pub keys: u32,
}

#[derive(Debug, Serialize)]
pub struct Cell {
    pub access: Access,
    /// Allow mode: keys in the allow-list, two per pair at least.
    pub keys: Option<usize>,
    pub size: usize,
    pub pairs: usize,
    pub sessions_per_pair: usize,
    pub sessions: usize,
    pub targets: Vec<TargetReport>,
    pub ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub target: Kind,
    pub command: String,
    /// What `PROGRAM --version` printed.
    pub version: Option<String>,
    pub error: Option<String>,
    pub figures: Option<Figures>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub sessions_established: usize,
    /// From the first handshake to the last session, cookie rounds and retries included.
    pub setup_secs: f64,
    /// Cookie replies the peers answered during setup (allow mode: one per challenged address).
    pub cookie_rounds: u64,
    pub measured_secs: f64,
    pub warmup_sent: u64,
    pub warmup_delivered: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub first_send_error: Option<String>,
    /// What the generator managed to send, per second of the measured phase.
    pub offered_pps: f64,
    pub delivered: u64,
    pub delivered_pps: f64,
    /// Delivered UDP payload (whole WireGuard datagrams), without IP and UDP headers.
    pub gbit_per_s: f64,
    pub loss_percent: f64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub receive_errors: u64,
    pub latency_us: Latency,
    pub cpu_ns: u64,
    /// The target's CPU time over the measured phase and drain, per delivered datagram.
    pub cpu_us_per_packet: Option<f64>,
    pub rss_kib: u64,
    /// The generator process's CPU over the same span, in % of one core.
    pub generator_cpu_percent: f64,
    /// UDP receive-buffer drops in this network namespace during the span (any socket).
    pub udp_rcvbuf_errors: u64,
    /// Of those, at the target's socket: offered more than it could read.
    pub target_socket_drops: u64,
    /// At the generator's receiving sockets: loss that is the generator's, not the target's.
    pub generator_socket_drops: u64,
}

impl Figures {
    pub fn new(
        m: &Measurement,
        size: usize,
        sessions_established: usize,
        setup_secs: f64,
        cookie_rounds: u64,
        rss_kib: u64,
    ) -> Self {
        let secs = m.measured.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let us = |ns: Option<u64>| ns.map(|v| v as f64 / 1000.0);
        let span = secs + 1e-9;
        Figures {
            sessions_established,
            setup_secs,
            cookie_rounds,
            measured_secs: secs,
            warmup_sent: m.warmup_sent,
            warmup_delivered: m.warmup_delivered,
            sent: m.sent,
            send_errors: m.send_errors,
            first_send_error: m.first_send_error.clone(),
            offered_pps: per_sec(m.sent),
            delivered: m.delivered,
            delivered_pps: per_sec(m.delivered),
            gbit_per_s: per_sec(m.delivered) * size as f64 * 8.0 / 1e9,
            loss_percent: if m.sent > 0 {
                (1.0 - m.delivered as f64 / m.sent as f64).max(0.0) * 100.0
            } else {
                100.0
            },
            duplicates: m.duplicates,
            unexpected: m.unexpected,
            receive_errors: m.receive_errors,
            latency_us: Latency {
                p50: us(m.latency.quantile(0.5)),
                p99: us(m.latency.quantile(0.99)),
                p999: us(m.latency.quantile(0.999)),
                max: us((m.latency.count() > 0).then(|| m.latency.max())),
                mean: m.latency.mean().map(|ns| ns / 1000.0),
            },
            cpu_ns: m.target_cpu_ns,
            cpu_us_per_packet: (m.delivered > 0)
                .then(|| m.target_cpu_ns as f64 / 1000.0 / m.delivered as f64),
            rss_kib,
            generator_cpu_percent: m.generator_cpu_ns as f64 / 1e9 / span * 100.0,
            udp_rcvbuf_errors: m.udp_rcvbuf_errors,
            target_socket_drops: m.target_socket_drops,
            generator_socket_drops: m.generator_socket_drops,
        }
    }
}

/// One target's figures over another's, in the same cell.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub cpu_per_packet: Option<f64>,
    pub delivered_pps: Option<f64>,
    pub p99_latency: Option<f64>,
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// "ours / forwarder", "baseline / forwarder" and "ours / baseline", where both ran.
pub fn ratios(targets: &[TargetReport]) -> Vec<Ratio> {
    let figures = |k: Kind| {
        targets
            .iter()
            .find(|t| t.target == k)
            .and_then(|t| t.figures.as_ref())
    };
    let mut out = Vec::new();
    for (a, b) in [
        (Kind::Ours, Kind::Forwarder),
        (Kind::Baseline, Kind::Forwarder),
        (Kind::Ours, Kind::Baseline),
    ] {
        let (Some(fa), Some(fb)) = (figures(a), figures(b)) else {
            continue;
        };
        out.push(Ratio {
            name: format!("{} / {}", a.name(), b.name()),
            cpu_per_packet: div(fa.cpu_us_per_packet, fb.cpu_us_per_packet),
            delivered_pps: div(Some(fa.delivered_pps), Some(fb.delivered_pps)),
            p99_latency: div(fa.latency_us.p99, fb.latency_us.p99),
        });
    }
    out
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

pub fn header() -> String {
    format!(
        "{:<9} {:<5} {:>5} {:>5} {:>9} {:>10} {:>10} {:>6} {:>6} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>7} {:>7}",
        "target",
        "mode",
        "size",
        "pairs",
        "sess/pair",
        "sent pps",
        "deliv pps",
        "Gbit/s",
        "loss%",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "CPU µs/pkt",
        "RSS KiB",
        "send err",
        "setup s",
        "cookies"
    )
}

pub fn row(cell: &Cell, t: &TargetReport) -> String {
    let lead = format!(
        "{:<9} {:<5} {:>5} {:>5} {:>9}",
        t.target.name(),
        cell.access.name(),
        cell.size,
        cell.pairs,
        cell.sessions_per_pair
    );
    match (&t.figures, &t.error) {
        (Some(f), _) => format!(
            "{lead} {:>10.0} {:>10.0} {:>6.2} {:>6.2} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>7.2} {:>7}",
            f.offered_pps,
            f.delivered_pps,
            f.gbit_per_s,
            f.loss_percent,
            opt(f.latency_us.p50, 1),
            opt(f.latency_us.p99, 1),
            opt(f.latency_us.p999, 1),
            opt(f.cpu_us_per_packet, 3),
            f.rss_kib,
            f.send_errors,
            f.setup_secs,
            f.cookie_rounds
        ),
        (None, error) => format!(
            "{lead} FAILED: {}",
            error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("unknown error")
        ),
    }
}

pub fn ratio_line(r: &Ratio) -> String {
    format!(
        "  {}: CPU per packet {}x, delivered pps {}x, p99 latency {}x",
        r.name,
        opt(r.cpu_per_packet, 2),
        opt(r.delivered_pps, 2),
        opt(r.p99_latency, 2)
    )
}

pub fn write_json(path: &Path, report: &Report) -> Result<(), ReportError> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").map_err(|source| ReportError::Write {
        path: path.to_owned(),
        source,
    })
}
