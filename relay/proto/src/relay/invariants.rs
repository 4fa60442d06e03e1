//! Consistency checks over the core, for tests, property tests and the fuzzer.
//!
//! Always compiled, like the table's, so that integration tests and the fuzz crate can call them
//! on the library as it ships.

use std::time::Instant;

use super::{MAX_LIKELY, Output, Relay, ScanDone};
use crate::message::{COOKIE_REPLY_LEN, DATA_MIN_LEN, INITIATION_LEN, Kind, Message, RESPONSE_LEN};
use crate::ratelimit::ScanClass;
use crate::stats::{DropReason, Stats};
use crate::timers::COOKIE_ROTATION;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl Relay {
    /// Checks the core's invariants; `now` is the latest instant given to the relay.
    ///
    /// The table's own (see [`crate::table::Table::check_invariants`]), and: the table holds no
    /// key in open mode and only allowed keys in allow-list mode, every key on a session has a
    /// recorded handshake; the table and rate-limit maps stay within their bounds; the periodic
    /// timers are due within one period; the counters agree with one another, with and without
    /// the transport data forwarded through the routes.
    pub fn check_invariants(&self, now: Instant) -> Result<(), String> {
        self.table.check_invariants(now)?;
        match &self.keys {
            None => {
                ensure!(self.peers.is_empty(), "open mode records handshakes by key");
                self.table.check_keys(|_| false, |_| false)?;
            }
            Some(keys) => {
                self.table
                    .check_keys(|k| keys.contains(k), |k| self.peers.contains_key(k))?;
                for (key, state) in &self.peers {
                    ensure!(
                        keys.contains(key),
                        "{key:?} has peer state but is not allowed"
                    );
                    ensure!(
                        state.last_handshake <= now,
                        "{key:?} handshook in the future"
                    );
                }
            }
        }
        ensure!(
            self.table.index_count() <= self.max_indices,
            "{} indices over the bound {}",
            self.table.index_count(),
            self.max_indices
        );
        ensure!(
            self.table.endpoint_count() <= self.max_endpoints,
            "{} endpoints over the bound {}",
            self.table.endpoint_count(),
            self.max_endpoints
        );
        ensure!(
            self.next_rotation <= now + COOKIE_ROTATION,
            "cookie rotation too far ahead: {:?} after now",
            self.next_rotation - now
        );
        check_counters(&self.stats)?;
        check_counters(&self.stats_with_fast_path())
    }

    /// Checks that `other` is in the same state as this relay: the same table (see
    /// [`crate::table::Table::check_same`]), allow-list, handshake records, random state and
    /// counters, the routes' included. For a twin fed the same inputs, some through the routes.
    pub fn check_same(&self, other: &Relay) -> Result<(), String> {
        self.table.check_same(&other.table)?;
        let keys = |r: &Relay| {
            r.keys.as_ref().map(|k| {
                let mut v: Vec<_> = k.iter().copied().collect();
                v.sort();
                v
            })
        };
        ensure!(keys(self) == keys(other), "allow-lists differ");
        let peers = |r: &Relay| {
            let mut v: Vec<_> = r
                .peers
                .iter()
                .map(|(k, s)| (*k, s.last_handshake, s.partners))
                .collect();
            v.sort_by_key(|p| p.0);
            v
        };
        ensure!(peers(self) == peers(other), "handshake records differ");
        ensure!(self.rng == other.rng, "random states differ");
        let (a, b) = (self.stats_with_fast_path(), other.stats_with_fast_path());
        ensure!(a == b, "counters differ: {a:?} against {b:?}");
        Ok(())
    }
}

/// Relations between counters that hold at any time.
fn check_counters(s: &Stats) -> Result<(), String> {
    let init = s.forwarded(Kind::Initiation);
    // Broadcast copies are counted among forwarded initiations, along with unicast ones.
    ensure!(
        init.packets >= s.broadcast_copies,
        "{} broadcast copies but {} initiations forwarded",
        s.broadcast_copies,
        init.packets
    );
    for (kind, len) in [
        (Kind::Initiation, INITIATION_LEN),
        (Kind::Response, RESPONSE_LEN),
        (Kind::CookieReply, COOKIE_REPLY_LEN),
    ] {
        let t = s.forwarded(kind);
        ensure!(
            t.bytes == t.packets * len as u64,
            "{}: {} bytes for {} packets of {len}",
            kind.as_str(),
            t.bytes,
            t.packets
        );
    }
    let data = s.forwarded(Kind::Data);
    ensure!(
        data.bytes >= data.packets * DATA_MIN_LEN as u64,
        "transport data: {} bytes for {} packets",
        data.bytes,
        data.packets
    );
    Ok(())
}

/// Checks that one call of [`Relay::handle_input`] (or [`Relay::handle_scanned`]) moved the
/// counters exactly as its output says. `datagram` is the datagram after the call (same length).
///
/// The relation: a `Drop(r)` adds 1 to `dropped(r)`; a `CookieReply` adds 1 to `cookie_replies`;
/// a `Forward` adds 1 packet (2 for `ForwardBoth`) and as many datagram lengths to
/// `forwarded(kind)`; a `Broadcast` to n targets adds n packets to `forwarded(Initiation)` and n to
/// `broadcast_copies`; a `Scan` adds nothing (its outcome is counted by `handle_scanned`). Nothing
/// else among those counters moves, expiry counters never move on input, `broadcast_limited` only
/// moves on a broadcast, `roams` by at most one, only on forwarded transport data.
///
/// mac1 work: `handle_input` tries at most the few likely keys and runs no scan; a scan's MACs
/// are counted once, by the `handle_scanned` call given its result (`scanned`).
pub fn check_step(
    before: &Stats,
    after: &Stats,
    datagram: &[u8],
    output: &Output,
    scanned: Option<&ScanDone>,
) -> Result<(), String> {
    check_mac1_spending(before, after, scanned)?;
    let kind = Message::parse(datagram).ok().map(|m| m.kind());
    let expect = Expected::of(output, kind, datagram.len() as u64)?;
    check_forwarded_and_dropped(before, after, output, &expect)?;
    check_others(before, after, output, &expect, kind)
}

/// How the counters [`check_step`] follows move for one output.
#[derive(Debug, Default)]
struct Expected {
    /// Packets and bytes, by [`Kind`].
    forwarded: [(u64, u64); 4],
    dropped: Option<DropReason>,
    cookie_replies: u64,
    broadcast_copies: u64,
}

impl Expected {
    /// What `output` moves, for a datagram of `kind` (`None` if it does not parse) and `len`
    /// bytes; an error if the output does not fit the datagram at all.
    fn of(output: &Output, kind: Option<Kind>, len: u64) -> Result<Self, String> {
        let mut expect = Self::default();
        let mut forwarded = |kind: Option<Kind>, n: u64| -> Result<(), String> {
            let kind = kind.ok_or("forwarded a datagram that does not parse")?;
            expect.forwarded[kind as usize] = (n, n * len);
            Ok(())
        };
        match output {
            Output::Forward(_) => forwarded(kind, 1)?,
            Output::ForwardBoth([a, b]) => {
                ensure!(a != b, "forwarded twice to {a}");
                forwarded(kind, 2)?;
            }
            Output::Broadcast(to) => {
                ensure!(
                    kind == Some(Kind::Initiation),
                    "broadcast a {kind:?}, not an initiation"
                );
                if !to.is_empty() {
                    forwarded(kind, to.len() as u64)?;
                }
                expect.broadcast_copies = to.len() as u64;
            }
            Output::CookieReply(..) => {
                ensure!(
                    matches!(kind, Some(Kind::Initiation | Kind::Response)),
                    "cookie reply to a {kind:?}"
                );
                expect.cookie_replies = 1;
            }
            Output::Scan(_) => {
                ensure!(
                    matches!(kind, Some(Kind::Initiation | Kind::Response)),
                    "scan asked for a {kind:?}"
                );
            }
            Output::Drop(reason) => expect.dropped = Some(*reason),
        }
        Ok(expect)
    }
}

/// Every kind's forwarded counters and every reason's drop counter moved as `expect` says.
fn check_forwarded_and_dropped(
    before: &Stats,
    after: &Stats,
    output: &Output,
    expect: &Expected,
) -> Result<(), String> {
    for k in Kind::ALL {
        let (b, a) = (before.forwarded(k), after.forwarded(k));
        let got = (
            a.packets.wrapping_sub(b.packets),
            a.bytes.wrapping_sub(b.bytes),
        );
        ensure!(
            got == expect.forwarded[k as usize],
            "{output:?}: forwarded {} moved by {got:?}, expected {:?}",
            k.as_str(),
            expect.forwarded[k as usize]
        );
    }
    for r in DropReason::ALL {
        let got = after.dropped(r).wrapping_sub(before.dropped(r));
        let want = u64::from(expect.dropped == Some(r));
        ensure!(
            got == want,
            "{output:?}: dropped {} moved by {got}, expected {want}",
            r.as_str()
        );
    }
    Ok(())
}

/// The other counters: cookie replies and broadcast copies as `expect` says, no expiry,
/// `broadcast_limited` only on a broadcast, and at most one roam, only on forwarded transport
/// data (the datagram's `kind`).
fn check_others(
    before: &Stats,
    after: &Stats,
    output: &Output,
    expect: &Expected,
    kind: Option<Kind>,
) -> Result<(), String> {
    let moved = |name: &str, b: u64, a: u64, want: u64| -> Result<(), String> {
        let got = a.wrapping_sub(b);
        ensure!(
            got == want,
            "{output:?}: {name} moved by {got}, expected {want}"
        );
        Ok(())
    };
    moved(
        "cookie_replies",
        before.cookie_replies,
        after.cookie_replies,
        expect.cookie_replies,
    )?;
    moved(
        "broadcast_copies",
        before.broadcast_copies,
        after.broadcast_copies,
        expect.broadcast_copies,
    )?;
    moved(
        "expired_indices",
        before.expired_indices,
        after.expired_indices,
        0,
    )?;
    moved(
        "expired_endpoints",
        before.expired_endpoints,
        after.expired_endpoints,
        0,
    )?;
    if !matches!(output, Output::Broadcast(_)) {
        moved(
            "broadcast_limited",
            before.broadcast_limited,
            after.broadcast_limited,
            0,
        )?;
    }
    let roams = after.roams.wrapping_sub(before.roams);
    let data_forwarded =
        kind == Some(Kind::Data) && matches!(output, Output::Forward(_) | Output::ForwardBoth(..));
    ensure!(
        roams == 0 || (roams == 1 && data_forwarded),
        "{output:?}: roams moved by {roams}"
    );
    Ok(())
}

fn check_mac1_spending(
    before: &Stats,
    after: &Stats,
    scanned: Option<&ScanDone>,
) -> Result<(), String> {
    let macs = after
        .mac1_computations
        .wrapping_sub(before.mac1_computations);
    let scans: u64 = ScanClass::ALL
        .iter()
        .map(|c| after.scans(*c).wrapping_sub(before.scans(*c)))
        .sum();
    match scanned {
        None => ensure!(
            scans == 0 && macs <= MAX_LIKELY as u64,
            "handle_input computed {macs} mac1s and counted {scans} scans"
        ),
        Some(done) => {
            let class = after
                .scans(done.class)
                .wrapping_sub(before.scans(done.class));
            ensure!(
                scans == 1 && class == 1 && macs == u64::from(done.scan.macs),
                "handle_scanned of {done:?} counted {scans} scans ({class} of its class) and \
                 {macs} mac1s"
            );
        }
    }
    Ok(())
}
