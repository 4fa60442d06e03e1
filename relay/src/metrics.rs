//! Prometheus metrics, read from the core's plain counters at scrape time.
//!
//! The packet path only bumps integers, inside the core or in each worker's own counters for the
//! lock-free routes; this collector turns them into metrics when Prometheus asks, so metrics cost
//! nothing per packet beyond those increments.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::server::{IoErrors, SharedRelay, lock};
use wpex_proto::ScanClass;
use wpex_proto::keys::AllowedKeys;
use wpex_proto::message::Kind;
use wpex_proto::{DropReason, Stats};

/// Outcomes of re-reading the key file, counted by the watcher.
#[derive(Debug, Default)]
pub struct Reloads {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

struct RelayCollector {
    relay: SharedRelay,
    io_errors: Arc<IoErrors>,
    reloads: Arc<Reloads>,
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
    metric_type: MetricType,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, metric_type)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for RelayCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.snapshot();
        let kinds = || Kind::ALL.into_iter();
        labelled(
            &mut e,
            "wpex_forwarded_packets",
            "Datagrams forwarded, by WireGuard message type (each broadcast copy counts)",
            MetricType::Counter,
            "type",
            kinds().map(|k| (k.as_str(), s.stats.forwarded(k).packets)),
        )?;
        labelled(
            &mut e,
            "wpex_forwarded_bytes",
            "Bytes forwarded, by WireGuard message type",
            MetricType::Counter,
            "type",
            kinds().map(|k| (k.as_str(), s.stats.forwarded(k).bytes)),
        )?;
        labelled(
            &mut e,
            "wpex_dropped_packets",
            "Datagrams dropped, by reason",
            MetricType::Counter,
            "reason",
            DropReason::ALL.map(|r| (r.as_str(), s.stats.dropped(r))),
        )?;
        counter(
            &mut e,
            "wpex_cookie_replies",
            "Cookie replies sent to challenge a source address",
            s.stats.cookie_replies,
        )?;
        counter(
            &mut e,
            "wpex_broadcast_copies",
            "Copies of handshake initiations sent by broadcast",
            s.stats.broadcast_copies,
        )?;
        counter(
            &mut e,
            "wpex_broadcast_rate_limited",
            "Broadcast copies not sent because of --broadcast-rate",
            s.stats.broadcast_limited,
        )?;
        counter(
            &mut e,
            "wpex_mac1_computations",
            "mac1 checks against one allowed key, on likely keys and in full scans",
            s.stats.mac1_computations,
        )?;
        labelled(
            &mut e,
            "wpex_mac1_scans",
            "Full scans of the allow-list, by the class of the handshake's source",
            MetricType::Counter,
            "class",
            ScanClass::ALL.map(|c| (c.as_str(), s.stats.scans(c))),
        )?;
        counter(
            &mut e,
            "wpex_roams",
            "Sources that began standing in for a quiet session side (a NAT rebinding, or a forger)",
            s.stats.roams,
        )?;
        counter(
            &mut e,
            "wpex_io_errors",
            "UDP receive and send errors",
            self.io_errors.total(),
        )?;
        labelled(
            &mut e,
            "wpex_key_reloads",
            "Re-reads of --allow-file that changed the key set, by result",
            MetricType::Counter,
            "result",
            [
                ("success", self.reloads.succeeded.load(Ordering::Relaxed)),
                ("failure", self.reloads.failed.load(Ordering::Relaxed)),
            ],
        )?;
        gauge(
            &mut e,
            "wpex_sessions",
            "Established sessions",
            s.sessions as i64,
        )?;
        gauge(
            &mut e,
            "wpex_endpoints",
            "Known endpoints (broadcast targets)",
            s.endpoints as i64,
        )?;
        gauge(
            &mut e,
            "wpex_indices",
            "Session indices in the table",
            s.indices as i64,
        )?;
        gauge(
            &mut e,
            "wpex_allowed_keys",
            "Allowed public keys (-1 in open mode)",
            s.allowed_keys.map_or(-1, |n| n as i64),
        )?;
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
pub fn registry(relay: SharedRelay, io_errors: Arc<IoErrors>, reloads: Arc<Reloads>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector {
        relay,
        io_errors,
        reloads,
    }));
    registry
}
