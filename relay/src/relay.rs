//! The relay's protocol core: sans-IO, fed `(now, source, datagram)`, answering what to send where.
//!
//! It owns no socket and reads no clock. The IO layer calls [`Relay::handle_input`] for every
//! datagram and [`Relay::handle_timeout`] when [`Relay::poll_timeout`] says.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::crypto::{CookieSecrets, PeerMacKeys};
use crate::keys::{AllowedKeys, PublicKey};
use crate::message::{COOKIE_REPLY_LEN, Handshake, Kind, MAC_LEN, Message, ParseError, Routed};
use crate::ratelimit::{KeyedBuckets, PRUNE_EVERY, TokenBucket, wpex_bucket};
use crate::stats::{DropReason, Stats};
use crate::table::{Role, State, Table};

/// How often the cookie secret is replaced (WireGuard's COOKIE_SECRET_MAX_AGE).
pub const COOKIE_ROTATION: Duration = Duration::from_secs(120);

/// Who may use the relay.
pub enum Access {
    /// Anyone: the original wpex default.
    Open,
    /// Only handshakes addressed to one of these keys; an empty set lets nobody in.
    AllowList(AllowedKeys),
}

pub struct Config {
    pub access: Access,
    /// Broadcast copies per second over all sources, burst 5x; 0 = unlimited (`--broadcast-rate`).
    pub broadcast_rate: u32,
    /// Handshake initiations per second from one source IP, burst 5x; 0 = unlimited.
    pub source_rate: u32,
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
    /// Send the datagram to each of these endpoints (may be empty).
    Broadcast(Vec<SocketAddr>),
    /// Do not forward; send this cookie reply back to the source instead.
    CookieReply(SocketAddr, [u8; COOKIE_REPLY_LEN]),
    Drop(DropReason),
}

pub struct Relay {
    access: Access,
    table: Table,
    cookies: CookieSecrets,
    next_rotation: Instant,
    broadcast: Option<TokenBucket>,
    per_source: KeyedBuckets<IpAddr>,
    next_prune: Instant,
    max_indices: usize,
    max_endpoints: usize,
    rng: StdRng,
    stats: Stats,
    /// Allow-list mode: when each key last completed a handshake through the relay.
    last_handshake: HashMap<PublicKey, Instant>,
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

impl Relay {
    /// `seed` feeds the cookie secrets and nonces: pass OS randomness outside tests.
    pub fn new(config: Config, now: Instant, seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self {
            access: config.access,
            table: Table::default(),
            cookies: CookieSecrets::new(secret),
            next_rotation: now + COOKIE_ROTATION,
            broadcast: wpex_bucket(config.broadcast_rate, now),
            per_source: KeyedBuckets::new(config.source_rate, config.max_endpoints, now),
            next_prune: now + PRUNE_EVERY,
            max_indices: config.max_indices,
            max_endpoints: config.max_endpoints,
            rng,
            stats: Stats::default(),
            last_handshake: HashMap::new(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The allow-list; `None` in open mode.
    pub fn allowed_keys(&self) -> Option<&AllowedKeys> {
        match &self.access {
            Access::Open => None,
            Access::AllowList(keys) => Some(keys),
        }
    }

    /// Allow-list mode: each key's last completed handshake. Bounded by the number of keys.
    pub fn last_handshakes(&self) -> impl Iterator<Item = (&PublicKey, &Instant)> {
        self.last_handshake.iter()
    }

    /// Replaces the allow-list. Sessions involving a key no longer allowed are cut at once; the
    /// others are untouched. Returns how many indices were cut.
    pub fn set_allowed_keys(&mut self, now: Instant, keys: AllowedKeys) -> usize {
        let cut = self.table.revoke(now, |k| keys.contains(k));
        self.last_handshake.retain(|k, _| keys.contains(k));
        self.access = Access::AllowList(keys);
        cut
    }

    /// Handles one datagram from `src`. May rewrite it in place (zeroing mac2) before it is sent.
    pub fn handle_input(&mut self, now: Instant, src: SocketAddr, datagram: &mut [u8]) -> Output {
        let (kind, decision) = match Message::parse(datagram) {
            Err(e) => (None, DropReason::from(e).into()),
            Ok(msg) => (
                Some(msg.kind()),
                match msg {
                    Message::Initiation(h) => self.on_initiation(now, src, &h),
                    Message::Response(h) => self.on_response(now, src, &h),
                    Message::CookieReply(r) => self.on_routed(src, &r, Kind::CookieReply),
                    Message::Data(r) => self.on_routed(src, &r, Kind::Data),
                },
            ),
        };
        if let Some(at) = decision.strip_mac2_at {
            datagram[at..at + MAC_LEN].fill(0);
        }
        let copies = match &decision.output {
            Output::Forward(_) => 1,
            Output::Broadcast(to) => {
                self.stats.broadcast_copies += to.len() as u64;
                to.len() as u64
            }
            Output::CookieReply(..) => {
                self.stats.cookie_replies += 1;
                0
            }
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
        let mut next = self.next_rotation.min(self.next_prune);
        if let Some(deadline) = self.table.next_deadline() {
            next = next.min(deadline);
        }
        next
    }

    /// Expires table entries, rotates the cookie secret and forgets idle rate-limit buckets.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired = self.table.expire(now);
        self.stats.expired_indices += expired.indices as u64;
        self.stats.expired_endpoints += expired.endpoints as u64;
        if now >= self.next_rotation {
            let mut fresh = [0u8; 32];
            self.rng.fill_bytes(&mut fresh);
            self.cookies.rotate(fresh);
            self.next_rotation = now + COOKIE_ROTATION;
        }
        if now >= self.next_prune {
            self.per_source.prune(now);
            self.next_prune = now + PRUNE_EVERY;
        }
    }

    /// In allow-list mode, the allowed key a handshake message is addressed to, judged by mac1,
    /// with that key's MAC keys. `Ok(None)` in open mode.
    fn addressee(
        &self,
        msg: &Handshake<'_>,
    ) -> Result<Option<(PublicKey, PeerMacKeys)>, DropReason> {
        let Access::AllowList(keys) = &self.access else {
            return Ok(None);
        };
        let (key, macs) = keys.addressee(msg).ok_or(DropReason::Mac1Invalid)?;
        Ok(Some((key, macs.clone())))
    }

    /// Allow-list address check. A known endpoint passes. An unknown one passes only with a mac2
    /// made from this relay's cookie for its address; otherwise it gets a cookie reply. A mac2 from
    /// this relay's cookie is zeroed, since the real peer never issued that cookie; any other mac2
    /// is left alone, since it may come from the real peer's own cookie.
    fn check_address(
        &mut self,
        src: SocketAddr,
        msg: &Handshake<'_>,
        macs: &PeerMacKeys,
    ) -> Result<Option<usize>, Output> {
        let ours = self.cookies.mac2_valid(src, msg);
        if !ours && !self.table.is_known(src) {
            let mut nonce = [0u8; 24];
            self.rng.fill_bytes(&mut nonce);
            let reply = macs.cookie_reply(msg, &self.cookies.cookie(src), nonce);
            return Err(Output::CookieReply(src, reply));
        }
        Ok(ours.then(|| msg.mac2_at()))
    }

    fn has_room_for(&self, endpoint: SocketAddr) -> bool {
        self.table.index_count() < self.max_indices
            && (self.table.is_known(endpoint) || self.table.endpoint_count() < self.max_endpoints)
    }

    fn on_initiation(&mut self, now: Instant, src: SocketAddr, msg: &Handshake<'_>) -> Decision {
        // mac1 first: a message for no allowed key touches nothing, not even the rate limits.
        let addressee = match self.addressee(msg) {
            Ok(a) => a,
            Err(reason) => return reason.into(),
        };
        if !self.per_source.try_take(src.ip(), now) {
            return DropReason::SourceRateLimited.into();
        }
        let mut strip_mac2_at = None;
        let mut responder_key = None;
        if let Some((key, macs)) = addressee {
            match self.check_address(src, msg, &macs) {
                Ok(strip) => strip_mac2_at = strip,
                Err(challenge) => return challenge.into(),
            }
            responder_key = Some(key);
        }
        let index = msg.sender_index();
        if self.table.contains_index(index) {
            return DropReason::IndexInUse.into();
        }
        if !self.has_room_for(src) {
            return DropReason::TableFull.into();
        }

        // The relay knows better than to broadcast once a key's endpoint is proven.
        let home = responder_key
            .and_then(|k| self.table.home(&k))
            .filter(|home| *home != src);
        self.table
            .insert_half_open(now, index, src, responder_key, home.is_some());
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
        let mut targets = Vec::new();
        for to in self.table.broadcast_targets(src, skip_homed) {
            if self.broadcast.as_mut().is_none_or(|b| b.try_take(now)) {
                targets.push(to);
            } else {
                self.stats.broadcast_limited += 1;
            }
        }
        targets
    }

    fn on_response(&mut self, now: Instant, src: SocketAddr, msg: &Handshake<'_>) -> Decision {
        let addressee = match self.addressee(msg) {
            Ok(a) => a,
            Err(reason) => return reason.into(),
        };
        // The answered index must be waiting before the sender is registered anywhere.
        let initiator = msg.receiver_index();
        let initiator_endpoint = match self.table.index(initiator) {
            None => return DropReason::UnknownReceiver.into(),
            Some(e) if e.state != State::HalfOpen => return DropReason::NotHalfOpen.into(),
            Some(e) => e.endpoint,
        };
        let mut strip_mac2_at = None;
        let mut initiator_key = None;
        if let Some((key, macs)) = addressee {
            match self.check_address(src, msg, &macs) {
                Ok(strip) => strip_mac2_at = strip,
                Err(challenge) => return challenge.into(),
            }
            initiator_key = Some(key);
        }
        let responder = msg.sender_index();
        if self.table.contains_index(responder) {
            return DropReason::IndexInUse.into();
        }
        if !self.has_room_for(src) {
            return DropReason::TableFull.into();
        }
        self.table
            .establish(now, initiator, responder, src, initiator_key);
        let responder_key = self.table.index(responder).and_then(|e| e.owner);
        for key in [initiator_key, responder_key].into_iter().flatten() {
            self.last_handshake.insert(key, now);
        }
        Decision {
            output: Output::Forward(initiator_endpoint),
            strip_mac2_at,
        }
    }

    /// Cookie replies and transport data: forwarded by receiver index, never re-homing anyone.
    fn on_routed(&mut self, src: SocketAddr, msg: &Routed<'_>, kind: Kind) -> Decision {
        let index = msg.receiver_index();
        let Some(entry) = self.table.index(index) else {
            return DropReason::UnknownReceiver.into();
        };
        let to = entry.endpoint;
        if kind == Kind::CookieReply {
            // Only someone the relay already talks to can have been sent the message answered.
            if !self.table.is_known(src) {
                return DropReason::UnknownSource.into();
            }
            return Output::Forward(to).into();
        }
        // Transport data must come from the endpoint of the session's other index. The original
        // moved the peer to any source here, so one forged packet could hijack a session; this
        // relay re-homes peers only through handshakes, which allow-list mode authenticates.
        let State::Session { peer } = entry.state else {
            return DropReason::NoSession.into();
        };
        let role = entry.role;
        let (owner, counterpart) = (entry.owner, entry.counterpart);
        match self.table.index(peer) {
            Some(p) if p.endpoint == src => {}
            _ => return DropReason::UnexpectedSource.into(),
        }
        // The initiator only sends data after verifying the response: that proves which key lives
        // at each end, so later initiations for these keys need not be broadcast.
        if role == Role::Responder && self.table.confirm(index) {
            if let Some(k) = owner {
                self.table.set_home(k, to);
            }
            if let Some(k) = counterpart {
                self.table.set_home(k, src);
            }
        }
        Output::Forward(to).into()
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
