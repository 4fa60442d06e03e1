//! The relay's protocol core: sans-IO, fed `(now, source, datagram)`, answering what to send where.
//!
//! It owns no socket and reads no clock. The IO layer calls [`Relay::handle_input`] for every
//! datagram and [`Relay::handle_timeout`] when [`Relay::poll_timeout`] says. Transport data may
//! take the core's [`Routes`] instead, without its lock: same decisions, same counters.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::crypto::CookieSecrets;
use crate::keys::{AllowedKeys, PublicKey, Scan};
use crate::message::{COOKIE_REPLY_LEN, Handshake, Kind, MAC_LEN, Message, ParseError, Routed};
use crate::ratelimit::{ScanBudget, ScanClass, SourceBuckets, TokenBucket, wpex_bucket};
use crate::routes::Routes;
use crate::stats::{DropReason, Stats};
use crate::table::{Reach, Role, Source, StandIn, State, Table};
use crate::timers::COOKIE_ROTATION;

/// mac1 computations per second that full scans may spend by default: about 0.2 of a core.
pub const DEFAULT_SCAN_BUDGET: u32 = 1_000_000;

/// Full scans per second one source IP may cause, burst 5x. A peer retries a handshake every 5 s,
/// so this leaves room for a few peers behind one NAT and none for a flood from one address.
pub const SCAN_SOURCE_RATE: u32 = 2;

/// Recent partners remembered per key, tried first when that key's endpoint sends a handshake.
const PARTNERS: usize = 4;

/// Slots per cookie generation remembering challenged sources, with the key they were asking
/// for (36 bytes each, 2.25 MiB). A flood must challenge 65,536 sources within a peer's 5 s
/// retry to overwrite its slot with probability 63%, and each mac1-valid challenge it causes
/// is a scan under the budget.
const CHALLENGED_SLOTS: usize = 1 << 16;

/// Slots remembering fresh sources refused a scan (4 bytes each, 8 MiB). Under a flood of 100k
/// one-off sources a second, a refused peer's slot survives until its retry 5 s later with
/// probability e^-0.25, about 78%, and each further retry gets the same chance.
const REFUSED_SLOTS: usize = 1 << 21;

/// Who may use the relay.
pub enum Access {
    /// Anyone: the original wpex default.
    Open,
    /// Only handshakes addressed to one of these keys; an empty set lets nobody in.
    AllowList(AllowedKeys),
}

/// How a [`Relay`] is set up; the defaults are an open relay.
pub struct Config {
    /// Who may use the relay.
    pub access: Access,
    /// Broadcast copies per second over all sources, burst 5x; 0 = unlimited (`--broadcast-rate`).
    pub broadcast_rate: u32,
    /// Handshake initiations per second from one source (an IPv4 address or an IPv6 /64), burst 5x;
    /// 0 = unlimited.
    pub source_rate: u32,
    /// mac1 computations per second for full scans of the allow-list; 0 = unlimited.
    pub scan_budget: u32,
    /// Bound on indices in the table; initiations beyond it are dropped.
    pub max_indices: usize,
    /// Bound on known endpoints (and on per-source rate-limit buckets).
    pub max_endpoints: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            access: Access::Open,
            broadcast_rate: 0,
            source_rate: 20,
            scan_budget: DEFAULT_SCAN_BUDGET,
            max_indices: 1 << 18,
            max_endpoints: 1 << 16,
        }
    }
}

/// What to do with the datagram just handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send the (possibly rewritten) datagram to this endpoint.
    Forward(SocketAddr),
    /// Send it to a session side's endpoint and to the source standing in for it (roaming).
    ForwardBoth([SocketAddr; 2]),
    /// Send the datagram to each of these endpoints (may be empty).
    Broadcast(Vec<SocketAddr>),
    /// Do not forward; send this cookie reply back to the source instead.
    CookieReply(SocketAddr, [u8; COOKIE_REPLY_LEN]),
    /// No likely key explains this handshake: run the scan, off any lock the forwarding path
    /// needs, and hand the datagram and the result to [`Relay::handle_scanned`].
    Scan(ScanRequest),
    /// Do not forward anything, for this reason.
    Drop(DropReason),
}

/// A full mac1 scan the core has admitted under its budget, to be run by the caller.
#[derive(Clone)]
pub struct ScanRequest {
    keys: Arc<AllowedKeys>,
    class: ScanClass,
}

/// A finished scan, for [`Relay::handle_scanned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanDone {
    /// The class the scan was admitted for.
    pub class: ScanClass,
    /// What the scan found.
    pub scan: Scan,
}

impl ScanRequest {
    /// Tries every allowed key on `datagram`, a snapshot of the allow-list taken at admission.
    pub fn run(&self, datagram: &[u8]) -> ScanDone {
        let scan = match Message::parse(datagram) {
            Ok(Message::Initiation(h) | Message::Response(h)) => self.keys.scan(&h),
            _ => Scan { key: None, macs: 0 },
        };
        ScanDone {
            class: self.class,
            scan,
        }
    }

    /// The class the scan was admitted for.
    pub fn class(&self) -> ScanClass {
        self.class
    }
}

impl PartialEq for ScanRequest {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys) && self.class == other.class
    }
}
impl Eq for ScanRequest {}

impl std::fmt::Debug for ScanRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanRequest")
            .field("keys", &self.keys.len())
            .field("class", &self.class)
            .finish()
    }
}

/// Allow-list mode: what the relay learned about one key from completed handshakes.
#[derive(Debug, Clone)]
struct KeyState {
    last_handshake: Instant,
    /// Keys it completed handshakes with, most recent first.
    partners: [Option<PublicKey>; PARTNERS],
}

impl KeyState {
    fn note_partner(&mut self, partner: PublicKey) {
        let at = self
            .partners
            .iter()
            .position(|p| *p == Some(partner))
            .unwrap_or(PARTNERS - 1);
        self.partners[..=at].rotate_right(1);
        self.partners[0] = Some(partner);
    }
}

/// Sources this relay sent a cookie reply to, with the key each was asking for, over the two
/// cookie generations a cookie is accepted in. Only they can hold a mac2 from this relay, so the
/// mac2 of anyone else is never computed; and their retry is matched on that key first.
///
/// Each generation is a fixed table of fingerprints, allocated at the first challenge: a new
/// entry overwrites whatever hashed to its slot. However many sources a flood has challenged,
/// memory stays fixed and junk still costs no MAC; a flood can at worst overwrite a peer's
/// entry, and its retry is then challenged again.
struct Challenged {
    current: Generation,
    previous: Generation,
    hasher: foldhash::fast::FixedState,
}

/// One cookie generation of [`Challenged`]. The fingerprints are apart from the keys: every
/// handshake from an unknown source looks one up, and 256 KiB of them stay in cache where
/// 2.5 MiB of fingerprints and keys cost each lookup a miss (issue 18 measured it).
#[derive(Default)]
struct Generation {
    /// Non-zero where a slot holds a source.
    fingerprints: Vec<u32>,
    keys: Vec<PublicKey>,
}

impl Challenged {
    fn new(seed: u64) -> Self {
        Self {
            current: Generation::default(),
            previous: Generation::default(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    /// The slot of `src` and the non-zero fingerprint stored there.
    fn slot(&self, src: SocketAddr) -> (usize, u32) {
        let h = self.hasher.hash_one(src);
        // Truncations on purpose: the low bits pick the slot, the high bits fingerprint.
        #[allow(clippy::cast_possible_truncation)]
        (
            (h as usize) & (CHALLENGED_SLOTS - 1),
            ((h >> 32) as u32) | 1,
        )
    }

    fn insert(&mut self, src: SocketAddr, key: PublicKey) {
        let (i, fingerprint) = self.slot(src);
        let g = &mut self.current;
        if g.fingerprints.is_empty() {
            g.fingerprints = vec![0; CHALLENGED_SLOTS];
            g.keys = vec![PublicKey([0; 32]); CHALLENGED_SLOTS];
        }
        g.fingerprints[i] = fingerprint;
        g.keys[i] = key;
    }

    fn key(&self, src: SocketAddr) -> Option<PublicKey> {
        let (i, fingerprint) = self.slot(src);
        [&self.current, &self.previous].into_iter().find_map(|g| {
            match (g.fingerprints.get(i), g.keys.get(i)) {
                (Some(f), Some(key)) if *f == fingerprint => Some(*key),
                _ => None,
            }
        })
    }

    fn may_hold_cookie(&self, src: SocketAddr) -> bool {
        self.key(src).is_some()
    }

    fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

/// Fresh sources refused a scan, in a fixed table of fingerprints: a new entry overwrites
/// whatever hashed to its slot, so memory stays fixed however many sources a flood spoofs. The
/// table is allocated at the first refusal: a relay never under pressure does not pay for it.
struct Refused {
    slots: Vec<u32>,
    hasher: foldhash::fast::FixedState,
}

impl Refused {
    fn new(seed: u64) -> Self {
        Self {
            slots: Vec::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    /// The slot of `src` and the non-zero fingerprint stored there.
    fn slot(&self, src: SocketAddr) -> (usize, u32) {
        let h = self.hasher.hash_one(src);
        // Truncations on purpose: the low bits pick the slot, the high bits fingerprint.
        #[allow(clippy::cast_possible_truncation)]
        ((h as usize) & (REFUSED_SLOTS - 1), ((h >> 32) as u32) | 1)
    }

    fn record(&mut self, src: SocketAddr) {
        if self.slots.is_empty() {
            self.slots = vec![0; REFUSED_SLOTS];
        }
        let (i, fingerprint) = self.slot(src);
        self.slots[i] = fingerprint;
    }

    fn contains(&self, src: SocketAddr) -> bool {
        let (i, fingerprint) = self.slot(src);
        self.slots.get(i) == Some(&fingerprint)
    }
}

/// The protocol core: the table, the allow-list, cookies and rate limits, fed datagrams and
/// times by the caller.
pub struct Relay {
    /// The allow-list; `None` in open mode. Shared with scans running off the core.
    keys: Option<Arc<AllowedKeys>>,
    table: Table,
    cookies: CookieSecrets,
    challenged: Challenged,
    next_rotation: Instant,
    broadcast: Option<TokenBucket>,
    per_source: SourceBuckets,
    scan_budget: Option<ScanBudget>,
    /// Scans per source, a table per class, so junk of one class never pushes another out.
    scan_per_source: [SourceBuckets; ScanClass::ALL.len()],
    refused: Refused,
    max_indices: usize,
    max_endpoints: usize,
    rng: StdRng,
    stats: Stats,
    /// Allow-list mode: keys that completed a handshake through the relay. Bounded by the keys.
    peers: HashMap<PublicKey, KeyState>,
}

/// A decision, plus where to zero a mac2 that only this relay could have asked for.
struct Decision {
    output: Output,
    strip_mac2_at: Option<usize>,
}

impl From<Output> for Decision {
    fn from(output: Output) -> Self {
        Decision {
            output,
            strip_mac2_at: None,
        }
    }
}

impl From<DropReason> for Decision {
    fn from(reason: DropReason) -> Self {
        Output::Drop(reason).into()
    }
}

/// Up to this many likely keys are tried before a full scan.
const MAX_LIKELY: usize = PARTNERS + 2;

/// The likely keys for one handshake, deduplicated, in the order they are tried.
#[derive(Default)]
struct Likely {
    keys: [Option<PublicKey>; MAX_LIKELY],
    len: usize,
}

impl Likely {
    fn push(&mut self, key: Option<PublicKey>) {
        if let Some(key) = key
            && self.len < MAX_LIKELY
            && !self.keys[..self.len].contains(&Some(key))
        {
            self.keys[self.len] = Some(key);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.keys[..self.len].iter().flatten().copied()
    }
}

impl Relay {
    /// `seed` feeds the cookie secrets and nonces: pass OS randomness outside tests.
    pub fn new(config: Config, now: Instant, seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self {
            keys: match config.access {
                Access::Open => None,
                Access::AllowList(keys) => Some(Arc::new(keys)),
            },
            table: Table::new(now),
            cookies: CookieSecrets::new(secret),
            challenged: Challenged::new(rng.next_u64()),
            next_rotation: now + COOKIE_ROTATION,
            broadcast: wpex_bucket(config.broadcast_rate, now),
            per_source: SourceBuckets::new(
                config.source_rate,
                config.max_endpoints,
                rng.next_u64(),
                now,
            ),
            scan_budget: ScanBudget::new(config.scan_budget, now),
            scan_per_source: std::array::from_fn(|_| {
                SourceBuckets::new(SCAN_SOURCE_RATE, config.max_endpoints, rng.next_u64(), now)
            }),
            refused: Refused::new(rng.next_u64()),
            max_indices: config.max_indices,
            max_endpoints: config.max_endpoints,
            rng,
            stats: Stats::default(),
            peers: HashMap::new(),
        }
    }

    /// What the core decided itself; [`Relay::stats_with_fast_path`] adds the routes' share.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// [`Relay::stats`] plus the transport data forwarded through [`Relay::routes`]: what the
    /// metrics report.
    pub fn stats_with_fast_path(&self) -> Stats {
        let mut stats = self.stats.clone();
        let fast = self.table.routes().forwarded();
        stats.forward(Kind::Data, fast.data.packets, fast.data.bytes);
        let cookies = fast.cookie_replies;
        stats.forward(Kind::CookieReply, cookies.packets, cookies.bytes);
        stats
    }

    /// The lock-free routes for transport data and cookie replies, kept in step with the table by the core.
    pub fn routes(&self) -> &Arc<Routes> {
        self.table.routes()
    }

    /// The index and endpoint table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The allow-list; `None` in open mode.
    pub fn allowed_keys(&self) -> Option<&AllowedKeys> {
        self.keys.as_deref()
    }

    /// Allow-list mode: each key's last completed handshake. Bounded by the number of keys.
    pub fn last_handshakes(&self) -> impl Iterator<Item = (&PublicKey, &Instant)> {
        self.peers.iter().map(|(k, s)| (k, &s.last_handshake))
    }

    /// Replaces the allow-list. Sessions involving a key no longer allowed are cut at once; the
    /// others are untouched. Returns how many indices were cut.
    pub fn set_allowed_keys(&mut self, now: Instant, keys: AllowedKeys) -> usize {
        let cut = self.table.revoke(now, |k| keys.contains(k));
        self.peers.retain(|k, _| keys.contains(k));
        self.keys = Some(Arc::new(keys));
        cut
    }

    /// Handles one datagram from `src`. May rewrite it in place (zeroing mac2) before it is sent.
    /// May also ask for a full mac1 scan ([`Output::Scan`]), which the caller runs without
    /// holding up forwarding and then hands to [`Relay::handle_scanned`].
    pub fn handle_input(&mut self, now: Instant, src: SocketAddr, datagram: &mut [u8]) -> Output {
        let (kind, decision) = match Message::parse(datagram) {
            Err(e) => (None, DropReason::from(e).into()),
            Ok(msg) => (
                Some(msg.kind()),
                match msg {
                    Message::Initiation(h) => match self.identify(now, src, &h, None) {
                        Ok(key) => self.on_initiation(now, src, &h, key),
                        Err(d) => d,
                    },
                    Message::Response(h) => self.on_response(now, src, &h, None),
                    Message::CookieReply(r) => self.on_routed(now, src, &r, Kind::CookieReply),
                    Message::Data(r) => self.on_routed(now, src, &r, Kind::Data),
                },
            ),
        };
        self.finish(kind, decision, datagram)
    }

    /// Finishes a handshake after the scan that [`Relay::handle_input`] asked for.
    pub fn handle_scanned(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &mut [u8],
        done: ScanDone,
    ) -> Output {
        self.stats.scanned(done.class, done.scan.macs);
        // The allow-list may have changed while the scan ran.
        let key = done
            .scan
            .key
            .filter(|k| self.keys.as_ref().is_some_and(|keys| keys.contains(k)));
        let (kind, decision) = match (Message::parse(datagram), key) {
            (Ok(Message::Initiation(h)), Some(key)) => (
                Some(Kind::Initiation),
                self.on_initiation(now, src, &h, Some(key)),
            ),
            (Ok(Message::Response(h)), Some(key)) => (
                Some(Kind::Response),
                self.on_response(now, src, &h, Some(key)),
            ),
            (Ok(msg), _) => (Some(msg.kind()), DropReason::Mac1Invalid.into()),
            (Err(e), _) => (None, DropReason::from(e).into()),
        };
        self.finish(kind, decision, datagram)
    }

    /// [`Relay::handle_input`], running any scan on the spot: for callers with no other thread
    /// to run scans on, such as tests and fuzzing.
    pub fn handle_input_inline(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &mut [u8],
    ) -> Output {
        match self.handle_input(now, src, datagram) {
            Output::Scan(request) => {
                let done = request.run(datagram);
                self.handle_scanned(now, src, datagram, done)
            }
            output => output,
        }
    }

    /// Counts a scan of `class` from `src` the caller could not queue: its worker is behind, as
    /// good as over budget, so a fresh source is remembered as refused, as the budget does.
    pub fn scan_abandoned(&mut self, src: SocketAddr, class: ScanClass) {
        if class == ScanClass::Fresh {
            self.refused.record(src);
        }
        self.stats.drop(DropReason::ScanBudget);
    }

    fn finish(&mut self, kind: Option<Kind>, decision: Decision, datagram: &mut [u8]) -> Output {
        if let Some(at) = decision.strip_mac2_at {
            datagram[at..at + MAC_LEN].fill(0);
        }
        let copies = match &decision.output {
            Output::Forward(_) => 1,
            Output::ForwardBoth(_) => 2,
            Output::Broadcast(to) => {
                self.stats.broadcast_copies += to.len() as u64;
                to.len() as u64
            }
            Output::CookieReply(..) => {
                self.stats.cookie_replies += 1;
                0
            }
            Output::Scan(_) => 0,
            Output::Drop(reason) => {
                self.stats.drop(*reason);
                0
            }
        };
        if let Some(kind) = kind.filter(|_| copies > 0) {
            self.stats
                .forward(kind, copies, datagram.len() as u64 * copies);
        }
        decision.output
    }

    /// The next instant [`Relay::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_rotation;
        if let Some(deadline) = self.table.next_deadline() {
            next = next.min(deadline);
        }
        next
    }

    /// Expires table entries and rotates the cookie secret.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired = self.table.expire(now);
        self.stats.expired_indices += expired.indices as u64;
        self.stats.expired_endpoints += expired.endpoints as u64;
        if now >= self.next_rotation {
            let mut fresh = [0u8; 32];
            self.rng.fill_bytes(&mut fresh);
            self.cookies.rotate(fresh);
            self.challenged.rotate();
            self.next_rotation = now + COOKIE_ROTATION;
        }
    }

    /// In allow-list mode, the allowed key a handshake is addressed to, judged by mac1: the likely
    /// keys first, a few MACs; otherwise a full scan, if the budgets admit it. `Ok(None)` in open
    /// mode. `initiator_endpoint` is where the initiation a response answers came from.
    ///
    /// The likely keys: the key `src` asked for when the relay challenged it (looked up for known
    /// endpoints and for messages with a mac2, never for a flood of first handshakes); for a response, the key proven at the initiator's endpoint; then the
    /// recent partners of the key proven at `src`. A flood from unknown sources costs a table
    /// lookup or two here, and no MAC.
    fn identify(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Handshake<'_>,
        initiator_endpoint: Option<SocketAddr>,
    ) -> Result<Option<PublicKey>, Decision> {
        let Some(keys) = self.keys.clone() else {
            return Ok(None);
        };
        let at_src = self.table.endpoint_key(src);
        let asked = (at_src.is_some() || !msg.mac2_is_zero())
            .then(|| self.challenged.key(src))
            .flatten();
        let likely = self.likely(asked, at_src.flatten(), initiator_endpoint);
        for key in likely.iter() {
            let Some(macs) = keys.get(&key) else {
                continue;
            };
            self.stats.mac1_computations += 1;
            if macs.mac1_matches(msg) {
                return Ok(Some(key));
            }
        }
        if keys.is_empty() {
            return Err(DropReason::Mac1Invalid.into());
        }
        let class = self.scan_class(src, msg, at_src.is_some(), asked.is_some());
        let cost = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        self.admit_scan(now, src, class, cost)?;
        Err(Output::Scan(ScanRequest { keys, class }).into())
    }

    /// The likely keys for [`Relay::identify`], in the order they are tried: `asked`, the key
    /// proven at `initiator_endpoint`, then the recent partners of `at_src`, the key proven at
    /// the source.
    fn likely(
        &self,
        asked: Option<PublicKey>,
        at_src: Option<PublicKey>,
        initiator_endpoint: Option<SocketAddr>,
    ) -> Likely {
        let mut likely = Likely::default();
        likely.push(asked);
        likely.push(initiator_endpoint.and_then(|e| self.table.endpoint_key(e).flatten()));
        if let Some(state) = at_src.and_then(|k| self.peers.get(&k)) {
            for partner in state.partners {
                likely.push(partner);
            }
        }
        likely
    }

    /// The budget class of a scan for a handshake from `src`; `known` when `src` is a known
    /// endpoint, `asked` when the relay challenged it for a key.
    fn scan_class(
        &self,
        src: SocketAddr,
        msg: &Handshake<'_>,
        known: bool,
        asked: bool,
    ) -> ScanClass {
        // Known endpoints first, then sources that proved their address with this relay's cookie.
        if known {
            ScanClass::Known
        } else if msg.mac2_is_zero() {
            if self.refused.contains(src) {
                ScanClass::Retry
            } else {
                ScanClass::Fresh
            }
        } else if asked && self.cookies.mac2_valid(src, msg) {
            ScanClass::Proven
        } else {
            ScanClass::Other
        }
    }

    /// Takes a scan of `cost` MACs in `class` from `src` out of the per-source limit and the
    /// scan budget, or says which refused it. A fresh source the budget refuses is remembered,
    /// so its retry is classed apart.
    fn admit_scan(
        &mut self,
        now: Instant,
        src: SocketAddr,
        class: ScanClass,
        cost: u32,
    ) -> Result<(), DropReason> {
        // The budget is one bucket, always in cache; a source's bucket is in a large table.
        // Under a flood most scans fail the budget, so it is asked first, and the source's
        // bucket is looked at only for scans the budget would run.
        let budget_has_room = self
            .scan_budget
            .as_mut()
            .is_none_or(|b| b.can_take(now, class, cost));
        let per_source = &mut self.scan_per_source[class as usize];
        if budget_has_room && !per_source.can_take(src.ip(), now) {
            return Err(DropReason::ScanSourceLimited);
        }
        if !budget_has_room {
            if class == ScanClass::Fresh {
                self.refused.record(src);
            }
            return Err(DropReason::ScanBudget);
        }
        if let Some(b) = self.scan_budget.as_mut() {
            b.try_take(now, class, cost);
        }
        self.scan_per_source[class as usize].try_take(src.ip(), now);
        Ok(())
    }

    /// Whether `msg` carries a mac2 made from this relay's cookie for `src`. Only computed for
    /// sources the relay challenged, so junk costs no MAC here.
    fn relay_mac2(&self, src: SocketAddr, msg: &Handshake<'_>) -> bool {
        !msg.mac2_is_zero()
            && self.challenged.may_hold_cookie(src)
            && self.cookies.mac2_valid(src, msg)
    }

    /// Allow-list address check. A known endpoint passes. An unknown one passes only with a mac2
    /// made from this relay's cookie for its address; otherwise it gets a cookie reply. A mac2 from
    /// this relay's cookie is zeroed, since the real peer never issued that cookie; any other mac2
    /// is left alone, since it may come from the real peer's own cookie.
    fn check_address(
        &mut self,
        src: SocketAddr,
        msg: &Handshake<'_>,
        key: PublicKey,
    ) -> Result<Option<usize>, Output> {
        let ours = self.relay_mac2(src, msg);
        if !ours && !self.table.is_known(src) {
            let Some(macs) = self.keys.as_ref().and_then(|keys| keys.get(&key)) else {
                return Err(Output::Drop(DropReason::Mac1Invalid));
            };
            let mut nonce = [0u8; 24];
            self.rng.fill_bytes(&mut nonce);
            let reply = macs.cookie_reply(msg, &self.cookies.cookie(src), nonce);
            self.challenged.insert(src, key);
            return Err(Output::CookieReply(src, reply));
        }
        Ok(ours.then(|| msg.mac2_at()))
    }

    /// What both handshake kinds pass before the table takes their sender index: the address
    /// check (allow-list mode, when `key` is known), a free sender index and room in the table,
    /// in that order. Returns where to strip mac2.
    fn admit_handshake(
        &mut self,
        src: SocketAddr,
        msg: &Handshake<'_>,
        key: Option<PublicKey>,
    ) -> Result<Option<usize>, Decision> {
        let strip_mac2_at = match key {
            Some(key) => self.check_address(src, msg, key).map_err(Decision::from)?,
            None => None,
        };
        if self.table.contains_index(msg.sender_index()) {
            return Err(DropReason::IndexInUse.into());
        }
        if !self.has_room_for(src) {
            return Err(DropReason::TableFull.into());
        }
        Ok(strip_mac2_at)
    }

    fn has_room_for(&self, endpoint: SocketAddr) -> bool {
        self.table.index_count() < self.max_indices
            && (self.table.is_known(endpoint) || self.table.endpoint_count() < self.max_endpoints)
    }

    /// An initiation whose addressee (`None` in open mode) is known.
    fn on_initiation(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Handshake<'_>,
        responder_key: Option<PublicKey>,
    ) -> Decision {
        // Identified first: a message for no allowed key never reaches the rate limits.
        if !self.per_source.try_take(src.ip(), now) {
            return DropReason::SourceRateLimited.into();
        }
        let strip_mac2_at = match self.admit_handshake(src, msg, responder_key) {
            Ok(strip) => strip,
            Err(refused) => return refused,
        };
        // The relay knows better than to broadcast once a key's endpoint is proven.
        let home = responder_key
            .and_then(|k| self.table.home(&k))
            .filter(|home| *home != src);
        let index = msg.sender_index();
        let unicast = home.is_some();
        if let Err(reason) =
            self.table
                .try_insert_half_open(now, index, src, responder_key, unicast)
        {
            return reason.into();
        }
        if responder_key.is_some() {
            // Allow-list mode: the address check has shown `src` receives.
            self.table.prove(src);
        }
        let output = match home {
            Some(home) => Output::Forward(home),
            None => Output::Broadcast(self.broadcast_targets(now, src, responder_key.is_some())),
        };
        Decision {
            output,
            strip_mac2_at,
        }
    }

    fn broadcast_targets(
        &mut self,
        now: Instant,
        src: SocketAddr,
        skip_homed: bool,
    ) -> Vec<SocketAddr> {
        let (mut targets, mut spent) = (Vec::new(), Vec::new());
        let (broadcast, stats) = (&mut self.broadcast, &mut self.stats);
        for (to, reach) in self.table.broadcast_targets(src, skip_homed) {
            if reach == Reach::Spent {
                stats.withheld += 1;
                continue;
            }
            // Spent even if the rate limit takes the copy: which copies it takes follows the
            // table's hash order, and what the table holds afterwards must not.
            if reach == Reach::Credit {
                spent.push(to);
            }
            if broadcast.as_mut().is_none_or(|b| b.try_take(now)) {
                targets.push(to);
            } else {
                stats.broadcast_limited += 1;
            }
        }
        for to in spent {
            self.table.spend_credit(to);
        }
        targets
    }

    /// A response; `initiator_key` is given when a scan has identified it already.
    fn on_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Handshake<'_>,
        initiator_key: Option<PublicKey>,
    ) -> Decision {
        // The answered index must be waiting before anything else is spent or registered.
        let initiator = msg.receiver_index();
        let initiator_endpoint = match self.table.index(initiator) {
            None => return DropReason::UnknownReceiver.into(),
            Some(e) if e.state != State::HalfOpen => return DropReason::NotHalfOpen.into(),
            Some(e) => e.endpoint,
        };
        let initiator_key = match initiator_key {
            Some(key) => Some(key),
            None => match self.identify(now, src, msg, Some(initiator_endpoint)) {
                Ok(key) => key,
                Err(d) => return d,
            },
        };
        let strip_mac2_at = match self.admit_handshake(src, msg, initiator_key) {
            Ok(strip) => strip,
            Err(refused) => return refused,
        };
        let responder = msg.sender_index();
        if let Err(reason) = self
            .table
            .try_establish(now, initiator, responder, src, initiator_key)
        {
            return reason.into();
        }
        let responder_key = self.table.owner(responder);
        self.note_handshake(now, initiator_key, responder_key);
        Decision {
            output: Output::Forward(initiator_endpoint),
            strip_mac2_at,
        }
    }

    /// Remembers when each key last completed a handshake, and with whom.
    fn note_handshake(&mut self, now: Instant, a: Option<PublicKey>, b: Option<PublicKey>) {
        for (key, partner) in [(a, b), (b, a)] {
            let Some(key) = key else { continue };
            let state = self.peers.entry(key).or_insert(KeyState {
                last_handshake: now,
                partners: [None; PARTNERS],
            });
            state.last_handshake = now;
            if let Some(partner) = partner {
                state.note_partner(partner);
            }
        }
    }

    /// Cookie replies and transport data, forwarded by receiver index. Handshakes alone move an
    /// endpoint; data from elsewhere is only accepted beside a quiet endpoint (see the table).
    fn on_routed(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Routed<'_>,
        kind: Kind,
    ) -> Decision {
        let index = msg.receiver_index();
        let Some(entry) = self.table.index(index) else {
            return DropReason::UnknownReceiver.into();
        };
        if kind == Kind::CookieReply {
            // Only someone the relay already talks to can have been sent the message answered.
            if !self.table.is_known(src) {
                return DropReason::UnknownSource.into();
            }
            return self.deliver(index).into();
        }
        let State::Session { peer } = entry.state else {
            return DropReason::NoSession.into();
        };
        let (role, to) = (entry.role, entry.endpoint);
        match self.table.admit_source(now, peer, src) {
            Source::Rejected => return DropReason::UnexpectedSource.into(),
            Source::NewRoam => self.stats.roams += 1,
            Source::Roam => {}
            // The initiator only sends data after verifying the response: that proves which key
            // lives at each end, so later initiations for these keys need not be broadcast.
            Source::Endpoint => {
                if role == Role::Responder && self.table.confirm(index) {
                    // The initiator's data: it was sent the response there.
                    self.table.prove(src);
                    if let Some(k) = self.table.owner(index) {
                        self.table.set_home(k, to);
                    }
                    if let Some(k) = self.table.counterpart(index) {
                        self.table.set_home(k, src);
                    }
                }
            }
        }
        self.deliver(index).into()
    }

    /// Where a message addressed to `index` goes: its endpoint, and a copy to a stand-in that
    /// has credit left (see [`crate::table::Roam`]).
    fn deliver(&mut self, index: u32) -> Output {
        let Some(endpoint) = self.table.index(index).map(|e| e.endpoint) else {
            return Output::Drop(DropReason::UnknownReceiver);
        };
        match self.table.stand_in_copy(index) {
            StandIn::Copy(stand_in) => Output::ForwardBoth([endpoint, stand_in]),
            StandIn::None => Output::Forward(endpoint),
            StandIn::Withheld => {
                self.stats.withheld += 1;
                Output::Forward(endpoint)
            }
        }
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::TooShort => DropReason::TooShort,
            ParseError::UnknownType(_) => DropReason::UnknownType,
            ParseError::Reserved => DropReason::Reserved,
            ParseError::Length { .. } => DropReason::BadLength,
        }
    }
}

// Invariant checks for tests and the fuzzer (relay/invariants.rs).
pub(crate) mod invariants;

#[cfg(test)]
mod tests {
    use super::*;

    fn source(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 51820))
    }

    /// Issue 19: the challenged table once overflowed into "anyone may hold a cookie", so junk
    /// cost a mac2 again. Now, 16 times its size later, a source never challenged is still
    /// told apart (no mac2 computed), and the last one challenged is still remembered.
    #[test]
    fn challenged_sources_stay_told_apart_past_the_tables_size() {
        let mut c = Challenged::new(3);
        let key = PublicKey([9; 32]);
        let flood = u32::try_from(16 * CHALLENGED_SLOTS).expect("fits");
        for i in 0..flood {
            c.insert(source(i), key);
        }
        assert_eq!(c.key(source(flood - 1)), Some(key));
        let strangers = (flood..flood + 100_000)
            .filter(|&i| c.may_hold_cookie(source(i)))
            .count();
        assert_eq!(
            strangers, 0,
            "never-challenged sources taken for challenged ones"
        );
        c.rotate();
        assert_eq!(c.key(source(flood - 1)), Some(key), "a generation later");
        c.rotate();
        assert_eq!(c.key(source(flood - 1)), None, "two generations later");
    }
}
