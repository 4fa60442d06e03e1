//! A fuzz scenario: bytes decoded into a bounded sequence of steps against the sans-IO core, with
//! the core's invariants and per-step accounting checked after every step.
//!
//! The format is our own (read through `arbitrary::Unstructured`, which yields zeros once the
//! input runs out) so that [`encode`] can write seeds, including ones made of real handshakes.
//! Shared with `relay/proto/tests/fuzz_corpus.rs`, which replays the seed corpus under `cargo test`.
//!
//! Each datagram is first offered to the relay's lock-free routes, as the IO workers do, and only
//! then to the core. A twin relay gets the same inputs and decides all of them in the core: where
//! the routes forward, the twin must forward the same way, and after every step both relays must
//! be in the same state, heard times and counters included.
//!
//! Layout: a flags byte, a config byte, 4 x 32 key bytes if the flags ask for them, then steps of
//! one opcode byte each followed by its fields (see [`Step`]). Multi-byte integers are little-endian.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use wpex_proto::DEFAULT_SCAN_BUDGET;
use wpex_proto::ScanDone;
use wpex_proto::Worker;
use wpex_proto::crypto::mac;
use wpex_proto::invariants::check_step;
use wpex_proto::keys::{AllowedKeys, PublicKey};
use wpex_proto::message::{
    COOKIE_REPLY_LEN, INITIATION_LEN, MAC_LEN, Message, ParseError, RESPONSE_LEN,
    TYPE_COOKIE_REPLY, TYPE_DATA, TYPE_INITIATION, TYPE_RESPONSE,
};
use wpex_proto::{Access, Config, Output, Relay};
use wpex_proto::{DropReason, Stats, Traffic};

/// Steps per execution: enough for handshakes, roaming and expiry, short enough to stay fast.
pub const MAX_STEPS: usize = 64;
/// Keys the scenario can address; `flags::CUSTOM_KEYS` replaces them (e.g. with real peers').
pub const KEYS: usize = 4;
/// A key no allow-list ever holds (unless custom keys name it).
const FOREIGN_KEY: [u8; 32] = [0xee; 32];
const SEEN_MAX: usize = 32;
const HISTORY_MAX: usize = 16;
const RAW_MAX: usize = 255;

/// Source addresses: repeated ports on one IP, IPv6, and an IPv4-mapped IPv6 twin of source 0.
pub const SOURCES: [SocketAddr; 8] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), 51820),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), 51821),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20)), 40001),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 30)), 40002),
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        51820,
    ),
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        4000,
    ),
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc633, 0x640a)),
        51820,
    ),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)), 6666),
];

/// Bits of the first byte.
pub mod flags {
    /// Allow-list mode (with the keys in the config byte's low nibble); open mode otherwise.
    pub const ALLOW_LIST: u8 = 1;
    /// 4 x 32 bytes of public keys follow the config byte.
    pub const CUSTOM_KEYS: u8 = 2;
    /// Before each datagram, run `handle_timeout` if `poll_timeout` is due, as the server does.
    pub const AUTO_TIMEOUTS: u8 = 4;
    /// Bits 3-4: `--source-rate` from [0, 1, 20, 0]; bits 5-6: `--broadcast-rate` from [0, 1, 4, 0].
    pub const SOURCE_RATE_SHIFT: u8 = 3;
    pub const BROADCAST_RATE_SHIFT: u8 = 5;
    /// A table bounded at 6 indices and 3 endpoints, so that `TableFull` is reachable.
    pub const SMALL_TABLE: u8 = 0x80;
}

/// The config byte: low nibble, the keys allowed at start; bits 4-5, the scan budget from
/// [unlimited, 4, 64, default] mac1 computations per second.
pub const SCAN_BUDGET_SHIFT: u8 = 4;

/// Which index a message names: one the scenario used before, a small number (collisions), or any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    Seen(u8),
    Small(u8),
    Value(u32),
}

/// One step. `src` picks from [`SOURCES`] (mod 8); `advance` moves the clock first (see [`advance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `key` mod 8: 0-3 a valid mac1 for that key, 4 for a key never allowed, else junk.
    /// `mac2` mod 4: zeros, the cookie learned for `src`, another source's cookie, junk.
    Initiation {
        src: u8,
        advance: u8,
        sender: Index,
        key: u8,
        mac2: u8,
        fill: u8,
    },
    Response {
        src: u8,
        advance: u8,
        sender: Index,
        receiver: Index,
        key: u8,
        mac2: u8,
    },
    CookieReply {
        src: u8,
        advance: u8,
        receiver: Index,
    },
    /// 32 + `extra` bytes of transport data.
    Data {
        src: u8,
        advance: u8,
        receiver: Index,
        extra: u8,
    },
    /// Transport data to a live session index found from `pick` among the seen ones, from the
    /// session peer's endpoint when `src` < 0x80, else from `SOURCES[src]` (roaming or forgery).
    SessionData {
        src: u8,
        advance: u8,
        pick: u8,
    },
    /// Any bytes (at most 255); with `fix_mac2`, a handshake's mac2 is remade from the cookie
    /// learned for `src`, as a real peer answering the relay's challenge would.
    Raw {
        src: u8,
        advance: u8,
        fix_mac2: bool,
        bytes: Vec<u8>,
    },
    /// Sends again one of the last datagrams, from any source (replay, forgery, roaming).
    Replay {
        src: u8,
        advance: u8,
        pick: u8,
    },
    Timeout {
        advance: u8,
    },
    /// Jumps to `poll_timeout` and runs `handle_timeout` there: exact deadlines.
    TimeoutDue,
    /// Replaces the allow-list with the keys in the low nibble (switching open mode to it).
    SetKeys {
        mask: u8,
    },
}

/// Clock advance from one byte: 10 ms steps to 1.27 s, 1 s steps to 63 s, 10 s steps to 630 s.
pub fn advance(b: u8) -> Duration {
    match b {
        0..128 => Duration::from_millis(u64::from(b) * 10),
        128..192 => Duration::from_secs(u64::from(b - 128)),
        _ => Duration::from_secs(u64::from(b - 192) * 10),
    }
}

/// The inverse of [`advance`], rounding down: the byte for at most `d`.
pub fn advance_byte(d: Duration) -> u8 {
    let ms = d.as_millis();
    if ms < 1280 {
        (ms / 10) as u8
    } else if ms < 64_000 {
        128 + (ms / 1000) as u8
    } else {
        192 + (ms / 10_000).min(63) as u8
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub config: u8,
    pub keys: Option<[[u8; 32]; KEYS]>,
}

struct Reader<'a>(Unstructured<'a>);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        u8::arbitrary(&mut self.0).unwrap_or(0)
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        self.0.bytes(n).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn index(&mut self) -> Index {
        match self.u8() {
            t @ 0..0xc0 => Index::Seen(t),
            t @ 0xc0..0xf0 => Index::Small(t & 0x0f),
            _ => Index::Value(self.u32()),
        }
    }

    // Long because: one arm per opcode, the whole step format in one list; `encode` mirrors it.
    fn step(&mut self) -> Step {
        let op = self.u8() % 16;
        if op == 11 {
            return Step::Timeout { advance: self.u8() };
        }
        if op == 12 {
            return Step::TimeoutDue;
        }
        if op == 13 {
            return Step::SetKeys { mask: self.u8() };
        }
        let (src, advance) = (self.u8(), self.u8());
        match op {
            0..=2 => Step::Initiation {
                src,
                advance,
                sender: self.index(),
                key: self.u8(),
                mac2: self.u8(),
                fill: self.u8(),
            },
            3 | 4 => Step::Response {
                src,
                advance,
                sender: self.index(),
                receiver: self.index(),
                key: self.u8(),
                mac2: self.u8(),
            },
            5 => Step::CookieReply {
                src,
                advance,
                receiver: self.index(),
            },
            6 | 7 => Step::Data {
                src,
                advance,
                receiver: self.index(),
                extra: self.u8(),
            },
            8 | 15 => Step::SessionData {
                src,
                advance,
                pick: self.u8(),
            },
            9 | 10 => {
                let fix_mac2 = self.u8() & 1 == 1;
                let len = usize::from(self.u8());
                Step::Raw {
                    src,
                    advance,
                    fix_mac2,
                    bytes: self.bytes(len),
                }
            }
            _ => Step::Replay {
                src,
                advance,
                pick: self.u8(),
            },
        }
    }
}

/// Decodes an input: its header and at most [`MAX_STEPS`] steps.
pub fn decode(data: &[u8]) -> (Header, Vec<Step>) {
    let mut r = Reader(Unstructured::new(data));
    let flags = r.u8();
    let config = r.u8();
    let keys = (flags & flags::CUSTOM_KEYS != 0).then(|| {
        let mut keys = [[0u8; 32]; KEYS];
        for k in &mut keys {
            for b in k.iter_mut() {
                *b = r.u8();
            }
        }
        keys
    });
    let mut steps = Vec::new();
    while !r.0.is_empty() && steps.len() < MAX_STEPS {
        steps.push(r.step());
    }
    (
        Header {
            flags,
            config,
            keys,
        },
        steps,
    )
}

fn encode_index(out: &mut Vec<u8>, i: Index) {
    match i {
        Index::Seen(t) => out.push(t.min(0xbf)),
        Index::Small(v) => out.push(0xc0 | (v & 0x0f)),
        Index::Value(v) => {
            out.push(0xff);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Writes an input that [`decode`] reads back as `header` and `steps` (raw bytes capped at 255).
// Long because: one arm per `Step` variant, the mirror of `Reader::step`, read side by side.
pub fn encode(header: &Header, steps: &[Step]) -> Vec<u8> {
    let mut out = vec![header.flags, header.config];
    if header.flags & flags::CUSTOM_KEYS != 0 {
        for k in header.keys.unwrap_or_default() {
            out.extend_from_slice(&k);
        }
    }
    for step in steps {
        match step {
            Step::Initiation {
                src,
                advance,
                sender,
                key,
                mac2,
                fill,
            } => {
                out.extend_from_slice(&[0, *src, *advance]);
                encode_index(&mut out, *sender);
                out.extend_from_slice(&[*key, *mac2, *fill]);
            }
            Step::Response {
                src,
                advance,
                sender,
                receiver,
                key,
                mac2,
            } => {
                out.extend_from_slice(&[3, *src, *advance]);
                encode_index(&mut out, *sender);
                encode_index(&mut out, *receiver);
                out.extend_from_slice(&[*key, *mac2]);
            }
            Step::CookieReply {
                src,
                advance,
                receiver,
            } => {
                out.extend_from_slice(&[5, *src, *advance]);
                encode_index(&mut out, *receiver);
            }
            Step::Data {
                src,
                advance,
                receiver,
                extra,
            } => {
                out.extend_from_slice(&[6, *src, *advance]);
                encode_index(&mut out, *receiver);
                out.push(*extra);
            }
            Step::SessionData { src, advance, pick } => {
                out.extend_from_slice(&[8, *src, *advance, *pick]);
            }
            Step::Raw {
                src,
                advance,
                fix_mac2,
                bytes,
            } => {
                let bytes = &bytes[..bytes.len().min(RAW_MAX)];
                out.extend_from_slice(&[9, *src, *advance, u8::from(*fix_mac2), bytes.len() as u8]);
                out.extend_from_slice(bytes);
            }
            Step::Replay { src, advance, pick } => {
                out.extend_from_slice(&[14, *src, *advance, *pick]);
            }
            Step::Timeout { advance } => out.extend_from_slice(&[11, *advance]),
            Step::TimeoutDue => out.push(12),
            Step::SetKeys { mask } => out.extend_from_slice(&[13, *mask]),
        }
    }
    out
}

/// What a run reached, for tests that check a seed goes where it should.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub steps: usize,
    pub stats: Stats,
    /// Initiations forwarded to a key's known home rather than broadcast.
    pub unicast_initiations: u64,
    pub forward_both: u64,
    /// Transport data the lock-free routes forwarded (the rest went to the core).
    pub routed: u64,
    /// Cookie replies the lock-free routes forwarded.
    pub routed_cookie_replies: u64,
    pub scans: u64,
    pub cookies_learned: u64,
    pub max_sessions: usize,
}

fn hash_label(label: &[u8; 8], key: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(key);
    h.finalize().into()
}

struct PoolKey {
    public: PublicKey,
    mac1: [u8; 32],
    cookie: [u8; 32],
}

impl PoolKey {
    fn new(bytes: [u8; 32]) -> Self {
        Self {
            public: PublicKey(bytes),
            mac1: hash_label(b"mac1----", &bytes),
            cookie: hash_label(b"cookie--", &bytes),
        }
    }
}

/// The mac1 and mac2 offsets of a well-sized handshake.
fn mac_offsets(d: &[u8]) -> Option<(usize, usize)> {
    match (d.first(), d.len()) {
        (Some(&TYPE_INITIATION), INITIATION_LEN) => Some((116, 132)),
        (Some(&TYPE_RESPONSE), RESPONSE_LEN) => Some((60, 76)),
        _ => None,
    }
}

/// What the routes counted for one datagram: (data, cookie replies), each (packets, bytes).
type Counted = ((u64, u64), (u64, u64));

struct Run {
    relay: Relay,
    /// Fed the same inputs, all through `handle_input`: the slow path the routes must agree with.
    twin: Relay,
    /// The relay's routes, as one IO worker holds them.
    worker: Worker,
    t0: Instant,
    now: Instant,
    pool: Vec<PoolKey>,
    /// The allowed subset of the pool (bit per key); `None` in open mode.
    allowed: Option<u8>,
    auto_timeouts: bool,
    seen: Vec<u32>,
    history: Vec<Vec<u8>>,
    /// Cookies from the relay's cookie replies, decrypted as a real peer would.
    cookies: BTreeMap<SocketAddr, [u8; MAC_LEN]>,
    summary: Summary,
}

fn allow_list(pool: &[PoolKey], mask: u8) -> AllowedKeys {
    AllowedKeys::new(
        pool.iter()
            .take(KEYS)
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, k)| k.public),
    )
}

impl Run {
    fn new(header: &Header) -> Self {
        let mut pool: Vec<PoolKey> = match header.keys {
            Some(keys) => keys.into_iter().map(PoolKey::new).collect(),
            None => (1..=KEYS as u8).map(|b| PoolKey::new([b; 32])).collect(),
        };
        pool.push(PoolKey::new(FOREIGN_KEY));
        let f = header.flags;
        let allowed = (f & flags::ALLOW_LIST != 0).then_some(header.config & 0x0f);
        let rate = |shift: u8, table: [u32; 4]| table[usize::from((f >> shift) & 3)];
        let config = || Config {
            access: match allowed {
                None => Access::Open,
                Some(mask) => Access::AllowList(allow_list(&pool, mask)),
            },
            source_rate: rate(flags::SOURCE_RATE_SHIFT, [0, 1, 20, 0]),
            broadcast_rate: rate(flags::BROADCAST_RATE_SHIFT, [0, 1, 4, 0]),
            scan_budget: [0, 4, 64, DEFAULT_SCAN_BUDGET]
                [usize::from((header.config >> SCAN_BUDGET_SHIFT) & 3)],
            max_indices: if f & flags::SMALL_TABLE != 0 {
                6
            } else {
                1 << 10
            },
            max_endpoints: if f & flags::SMALL_TABLE != 0 {
                3
            } else {
                1 << 10
            },
        };
        let t0 = Instant::now();
        let relay = Relay::new(config(), t0, [7; 32]);
        Self {
            worker: Worker::new(relay.routes().clone()),
            relay,
            twin: Relay::new(config(), t0, [7; 32]),
            t0,
            now: t0,
            pool,
            allowed,
            auto_timeouts: f & flags::AUTO_TIMEOUTS != 0,
            seen: Vec::new(),
            history: Vec::new(),
            cookies: BTreeMap::new(),
            summary: Summary::default(),
        }
    }

    fn resolve(&self, i: Index) -> u32 {
        match i {
            Index::Seen(t) if !self.seen.is_empty() => self.seen[usize::from(t) % self.seen.len()],
            Index::Seen(t) | Index::Small(t) => u32::from(t & 0x0f),
            Index::Value(v) => v,
        }
    }

    fn note_index(&mut self, i: u32) {
        if !self.seen.contains(&i) {
            if self.seen.len() == SEEN_MAX {
                self.seen.remove(0);
            }
            self.seen.push(i);
        }
    }

    /// Fills in mac1 for pool key `key` (mod 8: see [`Step::Initiation`]) and mac2 per `mode`.
    fn seal(&self, d: &mut [u8], src: SocketAddr, key: u8, mode: u8) {
        let Some((m1, m2)) = mac_offsets(d) else {
            return;
        };
        let tag = match usize::from(key % 8) {
            k if k <= KEYS => mac(&self.pool[k].mac1, &[&d[..m1]]),
            k => [k as u8; MAC_LEN],
        };
        d[m1..m2].copy_from_slice(&tag);
        let mac2 = match mode % 4 {
            0 => [0; MAC_LEN],
            1 => self.cookie_mac2(d, src),
            2 => {
                let other = self.cookies.keys().find(|a| **a != src).copied();
                other.map_or([0x5a; MAC_LEN], |o| self.cookie_mac2(d, o))
            }
            _ => [0xa5; MAC_LEN],
        };
        d[m2..m2 + MAC_LEN].copy_from_slice(&mac2);
    }

    /// A mac2 over `d` from the cookie learned for `holder`, or zeros if none was.
    fn cookie_mac2(&self, d: &[u8], holder: SocketAddr) -> [u8; MAC_LEN] {
        match (self.cookies.get(&holder), mac_offsets(d)) {
            (Some(cookie), Some((_, m2))) => mac(cookie, &[&d[..m2]]),
            _ => [0; MAC_LEN],
        }
    }

    fn build(&mut self, step: &Step) -> Option<(SocketAddr, Duration, Vec<u8>)> {
        let source = |b: u8| SOURCES[usize::from(b % 8)];
        let (src, adv, d) = match step {
            Step::Initiation {
                src,
                advance,
                sender,
                key,
                mac2,
                fill,
            } => {
                let d = self.initiation(source(*src), *sender, *key, *mac2, *fill);
                (*src, *advance, d)
            }
            Step::Response {
                src,
                advance,
                sender,
                receiver,
                key,
                mac2,
            } => {
                let d = self.response(source(*src), *sender, *receiver, *key, *mac2);
                (*src, *advance, d)
            }
            Step::CookieReply {
                src,
                advance,
                receiver,
            } => (*src, *advance, self.cookie_reply(*receiver)),
            Step::Data {
                src,
                advance,
                receiver,
                extra,
            } => (*src, *advance, self.data(self.resolve(*receiver), *extra)),
            Step::SessionData { src, advance, pick } => {
                let (receiver, from) = self.session_target(*src, *pick);
                let d = self.data(receiver, *pick);
                return Some((from, self::advance(*advance), d));
            }
            Step::Raw {
                src,
                advance,
                fix_mac2,
                bytes,
            } => {
                let d = self.raw(source(*src), *fix_mac2, bytes);
                (*src, *advance, d)
            }
            Step::Replay { src, advance, pick } => (*src, *advance, self.replayed(*pick)?),
            Step::Timeout { .. } | Step::TimeoutDue | Step::SetKeys { .. } => return None,
        };
        Some((source(src), advance(adv), d))
    }

    /// An initiation from `from`, its sender index noted, sealed as [`Step::Initiation`] says.
    fn initiation(
        &mut self,
        from: SocketAddr,
        sender: Index,
        key: u8,
        mac2: u8,
        fill: u8,
    ) -> Vec<u8> {
        let mut d = vec![fill; INITIATION_LEN];
        d[..4].copy_from_slice(&[TYPE_INITIATION, 0, 0, 0]);
        let sender = self.resolve(sender);
        d[4..8].copy_from_slice(&sender.to_le_bytes());
        self.note_index(sender);
        self.seal(&mut d, from, key, mac2);
        d
    }

    /// A response from `from`, its sender index noted, sealed as [`Step::Initiation`] says.
    fn response(
        &mut self,
        from: SocketAddr,
        sender: Index,
        receiver: Index,
        key: u8,
        mac2: u8,
    ) -> Vec<u8> {
        let mut d = vec![0x42; RESPONSE_LEN];
        d[..4].copy_from_slice(&[TYPE_RESPONSE, 0, 0, 0]);
        let (s, r) = (self.resolve(sender), self.resolve(receiver));
        d[4..8].copy_from_slice(&s.to_le_bytes());
        d[8..12].copy_from_slice(&r.to_le_bytes());
        self.note_index(s);
        self.seal(&mut d, from, key, mac2);
        d
    }

    /// A cookie reply to `receiver`.
    fn cookie_reply(&self, receiver: Index) -> Vec<u8> {
        let mut d = vec![0x33; COOKIE_REPLY_LEN];
        d[..4].copy_from_slice(&[TYPE_COOKIE_REPLY, 0, 0, 0]);
        d[4..8].copy_from_slice(&self.resolve(receiver).to_le_bytes());
        d
    }

    /// One of the last datagrams, from `pick`; none before the first.
    fn replayed(&self, pick: u8) -> Option<Vec<u8>> {
        if self.history.is_empty() {
            return None;
        }
        Some(self.history[usize::from(pick) % self.history.len()].clone())
    }

    /// The receiver index and source of a [`Step::SessionData`]: a live session index from
    /// `pick` on among the seen ones, sent from its peer's endpoint when `src` < 0x80.
    fn session_target(&self, src: u8, pick: u8) -> (u32, SocketAddr) {
        let source = SOURCES[usize::from(src % 8)];
        let found = (0..self.seen.len()).find_map(|k| {
            let i = self.seen[(usize::from(pick) + k) % self.seen.len()];
            match self.relay.table().index(i)?.state {
                wpex_proto::State::Session { peer } => {
                    Some((i, self.relay.table().index(peer)?.endpoint))
                }
                wpex_proto::State::HalfOpen => None,
            }
        });
        match found {
            Some((i, peer_endpoint)) if src < 0x80 => (i, peer_endpoint),
            Some((i, _)) => (i, source),
            None => (self.resolve(Index::Seen(pick)), source),
        }
    }

    /// [`Step::Raw`]'s bytes from `from`, a handshake's mac2 remade if `fix_mac2` and its
    /// sender index noted.
    fn raw(&mut self, from: SocketAddr, fix_mac2: bool, bytes: &[u8]) -> Vec<u8> {
        let mut d = bytes.to_vec();
        if fix_mac2 && let Some((_, m2)) = mac_offsets(&d) {
            let tag = self.cookie_mac2(&d, from);
            d[m2..m2 + MAC_LEN].copy_from_slice(&tag);
        }
        if d.len() >= 12 && matches!(d[0], TYPE_INITIATION | TYPE_RESPONSE) {
            self.note_index(u32::from_le_bytes([d[4], d[5], d[6], d[7]]));
        }
        d
    }

    fn data(&self, receiver: u32, extra: u8) -> Vec<u8> {
        let mut d = vec![0x44; 32 + usize::from(extra)];
        d[..4].copy_from_slice(&[TYPE_DATA, 0, 0, 0]);
        d[4..8].copy_from_slice(&receiver.to_le_bytes());
        d
    }

    fn check(&self) -> Result<(), String> {
        self.relay.check_invariants(self.now)?;
        self.twin.check_invariants(self.now)?;
        self.relay
            .check_same(&self.twin)
            .map_err(|e| format!("the relay using routes and its twin differ: {e}"))
    }

    fn timeout(&mut self) -> Result<(), String> {
        let (indices, endpoints) = (
            self.relay.table().index_count(),
            self.relay.table().endpoint_count(),
        );
        let before = self.relay.stats().clone();
        self.relay.handle_timeout(self.now);
        self.twin.handle_timeout(self.now);
        let after = self.relay.stats();
        let table = self.relay.table();
        let gone = (
            indices.checked_sub(table.index_count()),
            endpoints.checked_sub(table.endpoint_count()),
        );
        let (Some(gone_indices), Some(gone_endpoints)) = gone else {
            return Err("handle_timeout added to the table".into());
        };
        let counted = (
            after.expired_indices.wrapping_sub(before.expired_indices),
            after
                .expired_endpoints
                .wrapping_sub(before.expired_endpoints),
        );
        if (gone_indices as u64, gone_endpoints as u64) != counted {
            return Err(format!(
                "expiry removed {gone_indices} indices and {gone_endpoints} endpoints but \
                 counted {counted:?}"
            ));
        }
        let next = self.relay.poll_timeout();
        if next <= self.now {
            return Err(format!(
                "after handle_timeout(now), poll_timeout is {:?} before now: something outlived \
                 its deadline",
                self.now - next
            ));
        }
        Ok(())
    }

    fn set_keys(&mut self, mask: u8) -> Result<(), String> {
        let mask = mask & 0x0f;
        let before = self.relay.table().index_count();
        let cut = self
            .relay
            .set_allowed_keys(self.now, allow_list(&self.pool, mask));
        self.allowed = Some(mask);
        let twin_cut = self
            .twin
            .set_allowed_keys(self.now, allow_list(&self.pool, mask));
        if twin_cut != cut {
            return Err(format!("revocation cut {cut}, the twin's {twin_cut}"));
        }
        let after = self.relay.table().index_count();
        if before.checked_sub(after) != Some(cut) {
            return Err(format!(
                "revocation cut {cut}, table went {before} -> {after}"
            ));
        }
        Ok(())
    }

    fn datagram(&mut self, src: SocketAddr, original: Vec<u8>) -> Result<(), String> {
        if self.auto_timeouts && self.relay.poll_timeout() <= self.now {
            self.timeout()?;
        }
        if self.history.len() == HISTORY_MAX {
            self.history.remove(0);
        }
        self.history.push(original.clone());
        let mut twin_d = original.clone();
        let (twin_out, _) = decide(&mut self.twin, self.now, src, &mut twin_d)?;
        let (routed, counted) = self.offer_routes(src, &original);
        if let Some(to) = routed {
            return self.check_routed(src, &original, to, counted, &twin_out);
        }
        let none = ((0, 0), (0, 0));
        if counted != none {
            return Err(format!("routes forwarded nothing and counted {counted:?}"));
        }
        let mut d = original.clone();
        let limited = self.relay.stats().broadcast_limited;
        let (out, scanned) = decide(&mut self.relay, self.now, src, &mut d)?;
        if scanned {
            if self.allowed.is_none() {
                return Err("a scan in open mode".into());
            }
            self.summary.scans += 1;
        }
        if !self.same_decision(&out, &twin_out, limited) || d != twin_d {
            return Err(format!("the core decided {out:?}, the twin {twin_out:?}"));
        }
        self.check_output(src, &original, &d, &out)
    }

    /// Offers `datagram` to the relay's routes, as an IO worker does: where they forward it, and
    /// what they counted, as (data, cookie replies) of (packets, bytes).
    fn offer_routes(&mut self, src: SocketAddr, datagram: &[u8]) -> (Option<SocketAddr>, Counted) {
        let fast_before = self.relay.routes().forwarded();
        let routed = self.worker.batch(self.now).forward(src, datagram);
        let fast = self.relay.routes().forwarded();
        let delta = |before: Traffic, after: Traffic| {
            (
                after.packets.wrapping_sub(before.packets),
                after.bytes.wrapping_sub(before.bytes),
            )
        };
        let counted = (
            delta(fast_before.data, fast.data),
            delta(fast_before.cookie_replies, fast.cookie_replies),
        );
        (routed, counted)
    }

    /// A datagram the routes forwarded to `to`: counted once, as what it is, and forwarded there
    /// by the twin's core too (`twin_out`).
    fn check_routed(
        &mut self,
        src: SocketAddr,
        original: &[u8],
        to: SocketAddr,
        counted: Counted,
        twin_out: &Output,
    ) -> Result<(), String> {
        let one = (1, original.len() as u64);
        let cookie_reply = matches!(Message::parse(original), Ok(Message::CookieReply(_)));
        let expected = if cookie_reply {
            ((0, 0), one)
        } else {
            (one, (0, 0))
        };
        if counted != expected {
            return Err(format!(
                "routes forwarded one datagram and counted (data, cookie replies) {counted:?}"
            ));
        }
        if *twin_out != Output::Forward(to) {
            return Err(format!(
                "routes forwarded to {to}, the core decided {twin_out:?}"
            ));
        }
        if cookie_reply {
            self.summary.routed_cookie_replies += 1;
        } else {
            self.summary.routed += 1;
        }
        self.check_output(src, original, original, twin_out)
    }

    /// Whether the relay's core decided `out` as the twin's did; `limited` is the relay's
    /// `broadcast_limited` before the decision.
    fn same_decision(&self, out: &Output, twin_out: &Output, limited: u64) -> bool {
        // Broadcast order, and so which copies a rate limit cuts, follows each table's hash seed.
        match (out, twin_out) {
            (Output::Broadcast(a), Output::Broadcast(b))
                if self.relay.stats().broadcast_limited != limited =>
            {
                a.len() == b.len()
            }
            (Output::Broadcast(a), Output::Broadcast(b)) => {
                let (mut a, mut b) = (a.clone(), b.clone());
                a.sort();
                b.sort();
                a == b
            }
            // A scan request names its own relay's allow-list: compared by what it shows.
            _ => format!("{out:?}") == format!("{twin_out:?}"),
        }
    }

    /// What the output may be for this input, and how the datagram may have been rewritten.
    fn check_output(
        &mut self,
        src: SocketAddr,
        original: &[u8],
        sent: &[u8],
        out: &Output,
    ) -> Result<(), String> {
        let parsed = Message::parse(original);
        check_parse_verdict(&parsed, out)?;
        match out {
            Output::Forward(to) | Output::ForwardBoth([to, _])
                if !self.relay.table().is_known(*to) =>
            {
                return Err(format!("forwarded to unknown endpoint {to}"));
            }
            Output::Forward(to) => {
                if matches!(parsed, Ok(Message::Initiation(_))) {
                    self.summary.unicast_initiations += 1;
                    if *to == src {
                        return Err("initiation unicast back to its source".into());
                    }
                }
            }
            Output::ForwardBoth(..) => self.summary.forward_both += 1,
            Output::Broadcast(to) => {
                for (n, a) in to.iter().enumerate() {
                    if *a == src || !self.relay.table().is_known(*a) || to[..n].contains(a) {
                        return Err(format!("bad broadcast target {a} from {src}: {to:?}"));
                    }
                }
            }
            Output::CookieReply(to, reply) => {
                let Some(mask) = self.allowed else {
                    return Err("cookie reply in open mode".into());
                };
                if *to != src {
                    return Err(format!("cookie reply for {src} sent to {to}"));
                }
                self.learn_cookie(src, original, reply, mask)?;
            }
            Output::Drop(DropReason::Mac1Invalid) if self.allowed.is_none() => {
                return Err("mac1 judged in open mode".into());
            }
            Output::Scan(_) | Output::Drop(_) => {}
        }
        check_rewrite(original, sent, out)?;
        let sessions = self.relay.table().session_count();
        self.summary.max_sessions = self.summary.max_sessions.max(sessions);
        Ok(())
    }

    /// Decrypts a cookie reply as the peer would, with the public key it addressed (which must be
    /// allowed) and the mac1 of the message answered, and keeps the cookie for later mac2s.
    fn learn_cookie(
        &mut self,
        src: SocketAddr,
        answered: &[u8],
        reply: &[u8; COOKIE_REPLY_LEN],
        allowed: u8,
    ) -> Result<(), String> {
        let (m1, m2) = mac_offsets(answered).ok_or("cookie reply to a non-handshake")?;
        if reply[..4] != [TYPE_COOKIE_REPLY, 0, 0, 0] || reply[4..8] != answered[4..8] {
            return Err("cookie reply header or receiver index wrong".into());
        }
        let cookie = self
            .pool
            .iter()
            .take(KEYS)
            .enumerate()
            .filter(|(i, _)| allowed & (1 << i) != 0)
            .find_map(|(_, k)| {
                let mut buf = [0u8; MAC_LEN];
                buf.copy_from_slice(&reply[32..48]);
                XChaCha20Poly1305::new((&k.cookie).into())
                    .decrypt_in_place_detached(
                        XNonce::from_slice(&reply[8..32]),
                        &answered[m1..m2],
                        &mut buf,
                        Tag::from_slice(&reply[48..64]),
                    )
                    .ok()
                    .map(|()| buf)
            })
            .ok_or("cookie reply that no allowed key decrypts")?;
        self.cookies.insert(src, cookie);
        self.summary.cookies_learned += 1;
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Timeout { advance: a } => {
                self.now += advance(*a);
                self.timeout()?;
            }
            Step::TimeoutDue => {
                self.now = self.now.max(self.relay.poll_timeout());
                self.timeout()?;
            }
            Step::SetKeys { mask } => self.set_keys(*mask)?,
            _ => {
                if let Some((src, adv, d)) = self.build(step) {
                    self.now += adv;
                    self.datagram(src, d)?;
                }
            }
        }
        self.check()
    }
}

/// Decides one datagram in the core, running any scan it asks for on the spot, and checks the
/// counters moved as the outputs say. Returns the output and whether a scan ran.
fn decide(
    relay: &mut Relay,
    now: Instant,
    src: SocketAddr,
    d: &mut [u8],
) -> Result<(Output, bool), String> {
    let before = relay.stats().clone();
    let out = relay.handle_input(now, src, d);
    check_step(&before, relay.stats(), d, &out, None)?;
    let Output::Scan(request) = out else {
        return Ok((out, false));
    };
    let done: ScanDone = request.run(d);
    let before = relay.stats().clone();
    let out = relay.handle_scanned(now, src, d, done);
    check_step(&before, relay.stats(), d, &out, Some(&done))?;
    if matches!(out, Output::Scan(_)) {
        return Err("handle_scanned asked for another scan".into());
    }
    Ok((out, true))
}

/// A malformed datagram is dropped for the reason its parse error gives; a well-formed one is
/// never dropped for a parse reason.
fn check_parse_verdict(
    parsed: &Result<Message<'_>, ParseError>,
    out: &Output,
) -> Result<(), String> {
    match (parsed, out) {
        (Err(e), Output::Drop(r)) if *r == parse_reason(*e) => {}
        (Err(e), _) => return Err(format!("malformed ({e}) but {out:?}")),
        (Ok(_), Output::Drop(r)) if ALL_PARSE_REASONS.contains(r) => {
            return Err(format!("well-formed but dropped as {r:?}"));
        }
        _ => {}
    }
    Ok(())
}

/// The datagram `sent` for `original` keeps its length, and changes only by a forwarded
/// handshake's mac2 being zeroed.
fn check_rewrite(original: &[u8], sent: &[u8], out: &Output) -> Result<(), String> {
    let forwarding = matches!(
        out,
        Output::Forward(_) | Output::ForwardBoth(..) | Output::Broadcast(_)
    );
    if sent.len() != original.len() {
        return Err("datagram changed length".into());
    }
    if sent != original {
        let stripped = mac_offsets(original).is_some_and(|(_, m2)| {
            forwarding && sent[..m2] == original[..m2] && sent[m2..].iter().all(|b| *b == 0)
        });
        if !stripped {
            return Err(format!(
                "{out:?}: datagram rewritten beyond zeroing a forwarded mac2"
            ));
        }
    }
    Ok(())
}

const ALL_PARSE_REASONS: [DropReason; 4] = [
    DropReason::TooShort,
    DropReason::UnknownType,
    DropReason::Reserved,
    DropReason::BadLength,
];

/// Independent of `From<ParseError>` in the core, which is what it checks.
fn parse_reason(e: ParseError) -> DropReason {
    match e {
        ParseError::TooShort => DropReason::TooShort,
        ParseError::UnknownType(_) => DropReason::UnknownType,
        ParseError::Reserved => DropReason::Reserved,
        ParseError::Length { .. } => DropReason::BadLength,
    }
}

/// Runs one input. An `Err` names the step and the invariant that failed; the fuzz target panics
/// on it, and so do the tests.
pub fn run(data: &[u8]) -> Result<Summary, String> {
    let (header, steps) = decode(data);
    let mut run = Run::new(&header);
    run.check()?;
    for (n, step) in steps.iter().enumerate() {
        run.step(step).map_err(|e| {
            format!(
                "step {n} of {} at t0+{:?}: {step:?}\n  {e}\n  header: {header:?}",
                steps.len(),
                run.now - run.t0
            )
        })?;
    }
    run.summary.steps = steps.len();
    run.summary.stats = run.relay.stats_with_fast_path();
    Ok(run.summary)
}
