//! The forwarding path without the core's lock: transport data and cookie replies, routed by
//! receiver index alone.
//!
//! The [`Table`](crate::table::Table) publishes a route for index `i`, to `i`'s endpoint, exactly
//! when the core ([`Relay::handle_input`](crate::Relay::handle_input)) would forward messages
//! addressed to `i` there alone, changing nothing:
//! - **cookie replies** from any endpoint the relay knows, whenever `i` is held and has no roam
//!   candidate (a half-open initiation's index included: that is what a peer under load answers);
//! - **transport data** only from the session peer's endpoint (the route's `from`), when `i` is in
//!   a session, neither side has a roam candidate, and, if `i` is the responder's, its handshake
//!   is confirmed. Such data changes one thing, "the sender's side was heard now", which the route
//!   carries.
//!
//! The table is the only writer and keeps the routes, and the set of known endpoints, in step at
//! every mutation; the IO workers try [`Batch::forward`] first and hand the datagram to the core
//! only when it answers `None`.
//!
//! The "heard" time a data route carries is shared with the table: traffic forwarded here must
//! still count as heard, or a forger could roam in beside a peer whose packets never reach the
//! core. Forwarded packets are counted per worker and merged at scrape time
//! ([`Routes::forwarded`]).
//!
//! The map is `papaya`'s: reads are lock-free (no reader ever waits for a writer, a resize or
//! another reader), allocate nothing and take a hasher of our choice; memory is reclaimed by epochs
//! (`seize`), so a worker pins once per batch.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use wpex_proto::Worker;
//! use wpex_proto::{Config, Relay};
//!
//! let now = Instant::now();
//! let relay = Relay::new(Config::default(), now, [7; 32]);
//! // Once per IO worker; its counters reach the metrics through `Relay::stats_with_fast_path`.
//! let mut worker = Worker::new(relay.routes().clone());
//! // Once per received batch, with the batch's one clock reading; dropped before any await.
//! let batch = worker.batch(now);
//! let mut datagram = [0u8; 32];
//! datagram[0] = 4; // transport data for index 0, which has no session
//! let src = SocketAddr::from(([198, 51, 100, 1], 51820));
//! assert_eq!(batch.forward(src, &datagram), None, "so the core decides it");
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::message::{Kind, Message};
use crate::stats::Traffic;

/// Seeded per process and per map: receiver indices are chosen by whoever sends.
type Hasher = foldhash::fast::RandomState;

/// Where messages addressed to one index go.
#[derive(Debug)]
struct Route {
    to: SocketAddr,
    /// The only source transport data is taken from; `None`: cookie replies only.
    from: Option<SocketAddr>,
    /// When `from` last sent data, in nanoseconds since [`Routes::epoch`]; never goes back.
    heard: AtomicU64,
}

/// A published route, as tests and invariant checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteView {
    /// Where messages addressed to the index are sent.
    pub to: SocketAddr,
    /// Where transport data is taken from; `None` if the route carries cookie replies only.
    pub from: Option<SocketAddr>,
    /// When `from` last sent transport data, as the route has it.
    pub heard: Instant,
}

/// What the forwarding path forwarded, by message kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Transport data.
    pub data: Traffic,
    /// Cookie replies.
    pub cookie_replies: Traffic,
}

/// One worker's forwarding counters, on a cache line of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counters {
    data_packets: AtomicU64,
    data_bytes: AtomicU64,
    cookie_packets: AtomicU64,
    cookie_bytes: AtomicU64,
}

impl Counters {
    fn load(&self) -> Forwarded {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Forwarded {
            data: Traffic {
                packets: get(&self.data_packets),
                bytes: get(&self.data_bytes),
            },
            cookie_replies: Traffic {
                packets: get(&self.cookie_packets),
                bytes: get(&self.cookie_bytes),
            },
        }
    }
}

impl std::ops::AddAssign for Forwarded {
    fn add_assign(&mut self, other: Self) {
        for (total, more) in [
            (&mut self.data, other.data),
            (&mut self.cookie_replies, other.cookie_replies),
        ] {
            total.packets += more.packets;
            total.bytes += more.bytes;
        }
    }
}

#[derive(Debug, Default)]
struct Workers {
    live: Vec<Arc<Counters>>,
    /// What workers that are gone forwarded, so the totals never go back.
    retired: Forwarded,
}

/// Routes for transport data and cookie replies, readable without any lock. See the module
/// documentation.
#[derive(Debug)]
pub struct Routes {
    map: papaya::HashMap<u32, Route, Hasher>,
    /// The endpoints the table knows: cookie replies are taken from these alone.
    known: papaya::HashSet<SocketAddr, Hasher>,
    /// What "heard" times count from: fixed by the core at creation, so they fit an atomic.
    epoch: Instant,
    /// Taken to register a worker and to scrape, never to forward.
    workers: Mutex<Workers>,
}

impl Routes {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            // The core, the one writer, finishes a resize at once (under its lock, once per
            // doubling): an incremental one left unfinished when writes pause would make every
            // lookup of a moved entry search two tables.
            map: papaya::HashMap::builder()
                .hasher(Hasher::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            known: papaya::HashSet::builder()
                .hasher(Hasher::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            epoch,
            workers: Mutex::default(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(self.epoch)
    }

    /// The later of `at` and a stored time. Compared in nanoseconds, so an `at` before the epoch
    /// (which a route stores as the epoch) comes back unchanged.
    pub(crate) fn later(&self, at: Instant, nanos: u64) -> Instant {
        if nanos > self.nanos(at) {
            self.instant(nanos)
        } else {
            at
        }
    }

    /// Publishes the route for `index` to `to`, replacing any; with `data`, transport data from
    /// that source too, whose sender was last heard at that time.
    pub(crate) fn publish(&self, index: u32, to: SocketAddr, data: Option<(SocketAddr, Instant)>) {
        let route = Route {
            to,
            from: data.map(|(from, _)| from),
            heard: AtomicU64::new(data.map_or(0, |(_, heard)| self.nanos(heard))),
        };
        self.map.pin().insert(index, route);
    }

    /// Withdraws the route for `index`; returns the heard time a data route stored (see
    /// [`Routes::later`]).
    pub(crate) fn withdraw(&self, index: u32) -> Option<u64> {
        let map = self.map.pin();
        map.remove(&index)
            .filter(|route| route.from.is_some())
            .map(|route| route.heard.load(Ordering::Relaxed))
    }

    /// The table knows `endpoint` from now on.
    pub(crate) fn know(&self, endpoint: SocketAddr) {
        self.known.pin().insert(endpoint);
    }

    /// The table no longer knows `endpoint`.
    pub(crate) fn forget(&self, endpoint: SocketAddr) {
        self.known.pin().remove(&endpoint);
    }

    /// Every endpoint known here, in no particular order. For checks, not for the packet path.
    pub fn known(&self) -> Vec<SocketAddr> {
        self.known.pin().iter().copied().collect()
    }

    /// The later of `heard` and the time the route for `index` stored, if it is published.
    pub(crate) fn heard(&self, index: u32, heard: Instant) -> Instant {
        match self.map.pin().get(&index) {
            Some(route) => self.later(heard, route.heard.load(Ordering::Relaxed)),
            None => heard,
        }
    }

    /// The route for `index`, if published.
    pub fn get(&self, index: u32) -> Option<RouteView> {
        self.map.pin().get(&index).map(|r| RouteView {
            to: r.to,
            from: r.from,
            heard: self.instant(r.heard.load(Ordering::Relaxed)),
        })
    }

    /// Every published index, in no particular order. For checks, not for the packet path.
    pub fn indices(&self) -> Vec<u32> {
        self.map.pin().keys().copied().collect()
    }

    /// How many indices have a route.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no index has a route.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn workers(&self) -> MutexGuard<'_, Workers> {
        // Plain counters: still right after a panic elsewhere.
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What was forwarded here, over every worker there has been.
    pub fn forwarded(&self) -> Forwarded {
        let workers = self.workers();
        let mut total = workers.retired;
        for c in &workers.live {
            total += c.load();
        }
        total
    }
}

/// One IO worker's handle on the routes: its own counters, so that forwarding writes no cache
/// line another worker writes. Create one per worker, not per batch.
#[derive(Debug)]
pub struct Worker {
    routes: Arc<Routes>,
    counters: Arc<Counters>,
}

impl Worker {
    /// Registers a worker's counters with `routes`, so [`Routes::forwarded`] includes them.
    pub fn new(routes: Arc<Routes>) -> Self {
        let counters = Arc::new(Counters::default());
        routes.workers().live.push(counters.clone());
        Self { routes, counters }
    }

    /// Pins the routes for one batch of datagrams, all received by `now` (one clock reading).
    /// Drop it before waiting on IO: while pinned, removed routes cannot be freed.
    pub fn batch(&mut self, now: Instant) -> Batch<'_> {
        let routes = &*self.routes;
        Batch {
            guard: routes.map.guard(),
            known: routes.known.guard(),
            routes,
            counters: &self.counters,
            now: routes.nanos(now),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let mut workers = self.routes.workers();
        workers.retired += self.counters.load();
        workers.live.retain(|c| !Arc::ptr_eq(c, &self.counters));
    }
}

/// The routes pinned for one batch (see [`Worker::batch`]). Neither `Send` nor `Sync`: it stays
/// on its thread, so a spawned task cannot hold it across an `.await`.
pub struct Batch<'a> {
    routes: &'a Routes,
    guard: papaya::LocalGuard<'a>,
    known: papaya::LocalGuard<'a>,
    counters: &'a Counters,
    now: u64,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("now", &self.now).finish()
    }
}

impl Batch<'_> {
    /// Where to send `datagram` from `src` if it is transport data or a cookie reply on a
    /// published route; `None` sends it to the core, which decides it as it always has.
    pub fn forward(&self, src: SocketAddr, datagram: &[u8]) -> Option<SocketAddr> {
        let (msg, kind) = match Message::parse(datagram) {
            Ok(Message::Data(msg)) => (msg, Kind::Data),
            Ok(Message::CookieReply(msg)) => (msg, Kind::CookieReply),
            _ => return None,
        };
        let route = self.routes.map.get(&msg.receiver_index(), &self.guard)?;
        // This worker alone writes its counters (the batch borrows it mutably): no locked add.
        let (packets, bytes) = if kind == Kind::Data {
            if route.from != Some(src) {
                return None;
            }
            // Written only when later: a busy session's line stays shared among the workers.
            if route.heard.load(Ordering::Relaxed) < self.now {
                route.heard.fetch_max(self.now, Ordering::Relaxed);
            }
            (&self.counters.data_packets, &self.counters.data_bytes)
        } else {
            // Only someone the relay already talks to can have been sent the message answered.
            if !self.routes.known.contains(&src, &self.known) {
                return None;
            }
            (&self.counters.cookie_packets, &self.counters.cookie_bytes)
        };
        bump(packets, 1);
        bump(bytes, datagram.len() as u64);
        Some(route.to)
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}
