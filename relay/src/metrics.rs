//! Prometheus metrics, read from the core's plain counters at scrape time.
//!
//! The packet path only bumps integers, inside the core or in each worker's own counters for the
//! lock-free routes; this collector turns them into metrics when Prometheus asks, so metrics cost
//! nothing per packet beyond those increments.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::shared::{Counters, SharedRelay, lock};
use wpex_proto::ScanClass;
use wpex_proto::keys::AllowedKeys;
use wpex_proto::message::Kind;
use wpex_proto::{DropReason, Stats};

struct RelayCollector {
    relay: SharedRelay,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCollector").finish_non_exhaustive()
    }
}

/// A consistent copy of what the collector reports, taken under the lock and encoded outside it.
struct Snapshot {
    stats: Stats,
    sessions: usize,
    endpoints: usize,
    indices: usize,
    allowed_keys: Option<usize>,
    last_handshakes: Vec<(String, f64)>,
    io_errors: u64,
    reloads: [(&'static str, u64); 2],
}

/// A metric read from a snapshot: name, help, and how to read it.
type Plain<T> = (&'static str, &'static str, fn(&Snapshot) -> T);

/// Counters by one label: name, help, the label's name, and each label value's count.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> Vec<(&'static str, u64)>,
);

const FAMILIES: &[Family] = &[
    (
        "wpex_forwarded_packets",
        "Datagrams forwarded, by WireGuard message type (each broadcast copy counts)",
        "type",
        |s| by_label(&Kind::ALL, Kind::as_str, |k| s.stats.forwarded(k).packets),
    ),
    (
        "wpex_forwarded_bytes",
        "Bytes forwarded, by WireGuard message type",
        "type",
        |s| by_label(&Kind::ALL, Kind::as_str, |k| s.stats.forwarded(k).bytes),
    ),
    (
        "wpex_dropped_packets",
        "Datagrams dropped, by reason",
        "reason",
        |s| by_label(&DropReason::ALL, DropReason::as_str, |r| s.stats.dropped(r)),
    ),
    (
        "wpex_mac1_scans",
        "Full scans of the allow-list, by the class of the handshake's source",
        "class",
        |s| by_label(&ScanClass::ALL, ScanClass::as_str, |c| s.stats.scans(c)),
    ),
    (
        "wpex_key_reloads",
        "Re-reads of --allow-file that changed the key set, by result",
        "result",
        |s| s.reloads.to_vec(),
    ),
];

const COUNTERS: &[Plain<u64>] = &[
    (
        "wpex_cookie_replies",
        "Cookie replies sent to challenge a source address",
        |s| s.stats.cookie_replies,
    ),
    (
        "wpex_broadcast_copies",
        "Copies of handshake initiations sent by broadcast",
        |s| s.stats.broadcast_copies,
    ),
    (
        "wpex_broadcast_rate_limited",
        "Broadcast copies not sent because of --broadcast-rate",
        |s| s.stats.broadcast_limited,
    ),
    (
        "wpex_mac1_computations",
        "mac1 checks against one allowed key, on likely keys and in full scans",
        |s| s.stats.mac1_computations,
    ),
    (
        "wpex_roams",
        "Sources that began standing in for a quiet session side (a NAT rebinding, or a forger)",
        |s| s.stats.roams,
    ),
    (
        "wpex_copies_withheld",
        "Copies not sent to an address that has not shown it receives (a roaming stand-in or an open-mode broadcast target past its credit): reflection refused",
        |s| s.stats.withheld,
    ),
    ("wpex_io_errors", "UDP receive and send errors", |s| {
        s.io_errors
    }),
];

const GAUGES: &[Plain<i64>] = &[
    ("wpex_sessions", "Established sessions", |s| {
        s.sessions as i64
    }),
    (
        "wpex_endpoints",
        "Known endpoints (broadcast targets)",
        |s| s.endpoints as i64,
    ),
    ("wpex_indices", "Session indices in the table", |s| {
        s.indices as i64
    }),
    (
        "wpex_allowed_keys",
        "Allowed public keys (-1 in open mode)",
        |s| s.allowed_keys.map_or(-1, |n| n as i64),
    ),
];

/// Each of `all` with its label and count.
fn by_label<T: Copy>(
    all: &[T],
    label: fn(T) -> &'static str,
    count: impl Fn(T) -> u64,
) -> Vec<(&'static str, u64)> {
    all.iter().map(|&x| (label(x), count(x))).collect()
}

fn unix_seconds(at: Instant, now: Instant, wall: SystemTime) -> f64 {
    let when = wall - now.saturating_duration_since(at);
    when.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RelayCollector {
    fn snapshot(&self) -> Snapshot {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let relay = lock(&self.relay);
        let table = relay.table();
        Snapshot {
            // The core's counters and the per-worker ones of the lock-free routes.
            stats: relay.stats_with_fast_path(),
            io_errors: self.counters.io_errors(),
            reloads: self.counters.reloads(),
            sessions: table.session_count(),
            endpoints: table.endpoint_count(),
            indices: table.index_count(),
            allowed_keys: relay.allowed_keys().map(AllowedKeys::len),
            last_handshakes: relay
                .last_handshakes()
                .map(|(k, at)| (k.to_string(), unix_seconds(*at, now, wall)))
                .collect(),
        }
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn labelled<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for RelayCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.snapshot();
        for (name, help, label, values) in FAMILIES {
            labelled(&mut e, name, help, label, values(&s))?;
        }
        for (name, help, read) in COUNTERS {
            counter(&mut e, name, help, read(&s))?;
        }
        for (name, help, read) in GAUGES {
            gauge(&mut e, name, help, read(&s))?;
        }
        let mut family = e.encode_descriptor(
            "wpex_key_last_handshake_timestamp_seconds",
            "Unix time of each allowed key's last handshake through the relay",
            None,
            MetricType::Gauge,
        )?;
        for (key, at) in &s.last_handshakes {
            let labels = [("key", key.as_str())];
            ConstGauge::new(*at).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A registry exposing the relay's metrics.
pub fn registry(relay: SharedRelay, counters: Arc<Counters>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector { relay, counters }));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metrics table is users' reference: every metric, and every label value of
    /// the labelled ones, must be in it.
    #[test]
    fn the_readme_names_every_metric_and_label() {
        let readme = include_str!("../../README.md");
        let table: String = readme
            .lines()
            .filter(|l| l.starts_with("| `wpex_"))
            .collect::<Vec<_>>()
            .join("\n");
        for (name, ..) in FAMILIES {
            assert!(
                table.contains(&format!("`{name}_total{{")),
                "{name} is not in the README"
            );
        }
        for (name, ..) in COUNTERS {
            assert!(
                table.contains(&format!("`{name}_total`")),
                "{name} is not in the README"
            );
        }
        for (name, ..) in GAUGES {
            assert!(
                table.contains(&format!("`{name}`")),
                "{name} is not in the README"
            );
        }
        let labels = Kind::ALL.map(Kind::as_str).into_iter();
        let labels = labels
            .chain(DropReason::ALL.map(DropReason::as_str))
            .chain(ScanClass::ALL.map(ScanClass::as_str));
        for label in labels {
            assert!(
                table.contains(&format!("`{label}`")),
                "label {label} is not in the README"
            );
        }
    }
}
