//! Peer sockets and sessions: what a relay must have learned before it forwards transport data.
//!
//! Each peer pair has two UDP sockets on loopback, A and B, connected to the target. For each
//! session A sends a handshake initiation with a fresh random sender index, then B sends a
//! response with its own index whose receiver index is A's; the target forwards the response to
//! A, and a session counts as set up only when A has received it. That is all open mode needs:
//!
//! - The relay (relay/proto/src/relay.rs) registers the initiation's index as half-open and
//!   broadcasts the initiation to the endpoints it knows; B need not be one of them, since B
//!   never needs the initiation. A response is accepted from any source as long as its receiver
//!   index is half-open (5 s), so B does not have to send anything first.
//! - Responses must be sent after their initiation has been handled. Initiations go out first,
//!   then the responses of the same chunk. A target that reads several sockets at once (the
//!   original wpex reads one per CPU) may still handle a response first and drop it; B then
//!   answers once more, with a fresh index, while A's index is still half-open.
//! - The relay limits initiations per source IP (`--source-rate`, 20/s, burst 100) and a pair
//!   sets up many sessions from one address, so the benchmark starts our relay with
//!   `--source-rate 0`.
//!
//! Allow-list mode ([`crate::access`]) adds what real peers do. A's initiation carries a mac1
//! made with B's public key, B's response one made with A's. A relay answers a handshake from an
//! address it does not know with a cookie reply instead of forwarding it; the peer opens the
//! reply (with the key it addressed and the mac1 it sent), sends the same handshake again with a
//! mac2 from the cookie, and, as WireGuard does while a cookie is fresh, puts a mac2 on its later
//! handshakes too. The response sent along with a challenged initiation was dropped (its receiver
//! index was unknown), so B sends it again after A's round. The first session of every pair is
//! set up before any other, so each address is challenged once rather than once per handshake in
//! flight. Targets that send no cookie reply (the forwarder, an open relay) get the same
//! handshakes and simply forward them.
//!
//! Every peer socket has an address of its own (127.1.x.y; all of 127/8 is loopback), as peers
//! on a network do. Allow-list mode needs it: the relay allows 2 full scans of the allow-list a
//! second per source IP, which would hold up 64 pairs on 127.0.0.1 for a minute.
//!
//! Chunks grow while every handshake gets through and shrink when some are lost (a target with
//! a small receive buffer drops a burst, or a relay's scan budget refuses part of one); lost
//! sessions are retried with fresh indices, so a half-open index left behind by a lost response
//! is never reused. Setup gives up after [`ATTEMPTS`] rounds in a row that set up nothing.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};
use wpex_proto::crypto::Mac;

use crate::access::{AllowList, PairKeys};
use crate::sys::{BATCH, Epoll, RecvBatch, Wait, send_all};
use crate::wire::{self, INITIATION_LEN, RESPONSE_LEN};

/// Receive buffer of each peer socket; the kernel caps it at net.core.rmem_max.
const PEER_BUFFER: usize = 4 << 20;
/// Rounds of retries in a row that set up no session before setup gives up.
const ATTEMPTS: usize = 5;
/// How long to wait for a chunk's responses after the last one arrived.
const QUIET: Duration = Duration::from_millis(200);
/// The first peer socket's address; the others follow it.
const PEER_NET: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
/// Tries at finding a socket a port no other one has.
const PORT_TRIES: usize = 64;
/// How long a peer keeps putting a cookie into mac2 (WireGuard: COOKIE_SECRET_MAX_AGE less
/// COOKIE_SECRET_LATENCY).
const COOKIE_FRESH: Duration = Duration::from_secs(115);
/// Cookie replies answered per handshake, so a target that keeps challenging is not looped with.
const MAX_ROUNDS: u8 = 2;
/// Sides of a pair, as indices: A initiates, B responds.
const A: usize = 0;
const B: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("peer socket: {0}")]
    Socket(io::Error),
    #[error("sending handshakes: {0}")]
    Send(io::Error),
    #[error("reading handshake responses: {0}")]
    Receive(io::Error),
    #[error("no port of its own for a peer socket after {PORT_TRIES} tries")]
    NoPort,
    #[error("the allow-list has no keys for pair {0}")]
    NoKeys(usize),
    #[error(
        "only {established} of {wanted} sessions were set up ({ATTEMPTS} rounds in a row set up \
         none; {cookie_rounds} cookie replies answered, {unopened} that did not decrypt) \
         (does the target forward handshake responses? does it rate-limit handshakes per source IP? is its table full?)"
    )]
    Incomplete {
        established: usize,
        wanted: usize,
        cookie_rounds: u64,
        unopened: u64,
    },
}

/// Two peers that talk to each other through the target.
pub struct Pair {
    pub a: UdpSocket,
    pub b: UdpSocket,
    /// Allow-list mode: the keys A and B hold.
    pub keys: Option<PairKeys>,
}

impl Pair {
    fn side(&self, side: usize) -> &UdpSocket {
        if side == A { &self.a } else { &self.b }
    }
}

/// One session: A's index (B sends to it) and B's index (A sends to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub a_index: u32,
    pub b_index: u32,
}

fn bind_socket(addr: Ipv4Addr, target: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(PEER_BUFFER);
    socket.bind(&SocketAddrV4::new(addr, 0).into())?;
    // Connected: sends need no address, and only the target's datagrams are received.
    socket.connect(&target.into())?;
    Ok(socket.into())
}

/// A socket on `addr` whose port is not in `taken`. /proc's drop counters are told apart by
/// port alone, and sockets on different addresses may share one.
fn peer_socket(
    addr: Ipv4Addr,
    target: SocketAddrV4,
    taken: &mut HashSet<u16>,
) -> Result<UdpSocket, SetupError> {
    // Held until the end, so the kernel does not hand the same port out again.
    let mut rejected = Vec::new();
    for _ in 0..PORT_TRIES {
        let socket = bind_socket(addr, target).map_err(SetupError::Socket)?;
        let port = socket.local_addr().map_err(SetupError::Socket)?.port();
        if taken.insert(port) {
            return Ok(socket);
        }
        rejected.push(socket);
    }
    Err(SetupError::NoPort)
}

/// `count` pairs, each peer on its own loopback address; with `allow`, holding its keys.
pub fn open_pairs(
    count: usize,
    target: SocketAddrV4,
    allow: Option<&AllowList>,
) -> Result<Vec<Pair>, SetupError> {
    let mut taken = HashSet::from([target.port()]);
    let first = u32::from(PEER_NET);
    let mut pairs = Vec::with_capacity(count);
    for p in 0..count {
        // Below 2^16 pairs by the command line, so the addresses stay in 127/8.
        let addr = |side: usize| Ipv4Addr::from(first + (p * 2 + side) as u32);
        let keys = match allow {
            Some(list) => Some(list.pair(p).ok_or(SetupError::NoKeys(p))?),
            None => None,
        };
        pairs.push(Pair {
            a: peer_socket(addr(A), target, &mut taken)?,
            b: peer_socket(addr(B), target, &mut taken)?,
            keys,
        });
    }
    Ok(pairs)
}

/// Reads and discards whatever is waiting on every socket (broadcast initiations, late
/// responses), so the measurement starts clean.
pub fn drain(pairs: &[Pair]) -> Result<(), SetupError> {
    let mut rx = RecvBatch::new(2048);
    for p in pairs {
        for s in [&p.a, &p.b] {
            while rx.recv(s.as_fd(), Wait::No).map_err(SetupError::Receive)? > 0 {}
        }
    }
    Ok(())
}

/// The sessions set up, and what it took.
pub struct Established {
    /// By pair.
    pub sessions: Vec<Vec<Session>>,
    /// Cookie replies the peers opened and answered. With our relay in allow-list mode, one per
    /// peer address; with a target that sends none, 0.
    pub cookie_rounds: u64,
}

/// A session being set up: which pair, the indices of this attempt, and its two handshakes as
/// last sent.
struct Pending {
    pair: usize,
    session: Session,
    initiation: [u8; INITIATION_LEN],
    response: [u8; RESPONSE_LEN],
    /// Cookie replies answered, for the initiation (A) and the response (B).
    rounds: [u8; 2],
    done: bool,
}

impl Pending {
    fn message(&self, side: usize) -> &[u8] {
        if side == A {
            &self.initiation
        } else {
            &self.response
        }
    }
}

fn fresh_index(used: &mut HashSet<u32>, rng: &mut impl Rng) -> u32 {
    loop {
        let i = rng.r#gen::<u32>();
        if used.insert(i) {
            return i;
        }
    }
}

/// Sends the message of `side` of each session not yet set up, batching consecutive messages
/// of the same pair into one `sendmmsg`.
fn send_grouped(pairs: &[Pair], chunk: &[Pending], side: usize) -> Result<(), SetupError> {
    let live: Vec<&Pending> = chunk.iter().filter(|p| !p.done).collect();
    let mut at = 0;
    while at < live.len() {
        let pair = live[at].pair;
        let run = live[at..]
            .iter()
            .take(BATCH)
            .take_while(|p| p.pair == pair)
            .count();
        let refs: Vec<&[u8]> = live[at..at + run].iter().map(|p| p.message(side)).collect();
        let (_, error) = send_all(pairs[pair].side(side).as_fd(), &refs, &[]);
        // A refused connected send means the target is gone (ECONNREFUSED): no use going on.
        if let Some(e) = error {
            return Err(SetupError::Send(e));
        }
        at += run;
    }
    Ok(())
}

fn send_one(socket: &UdpSocket, message: &[u8]) -> Result<(), SetupError> {
    socket.send(message).map(drop).map_err(SetupError::Send)
}

/// A cookie a peer got from the target, and when.
type Cookie = Option<(Mac, Instant)>;

struct Setup<'a> {
    pairs: &'a [Pair],
    wanted: usize,
    used: HashSet<u32>,
    done: Vec<Vec<Session>>,
    /// Per pair, A's and B's latest cookie.
    cookies: Vec<[Cookie; 2]>,
    cookie_rounds: u64,
    unopened: u64,
    chunk_len: usize,
}

impl Setup<'_> {
    fn established(&self) -> usize {
        self.done.iter().map(Vec::len).sum()
    }

    fn pending(&mut self, pair: usize, now: Instant, rng: &mut impl Rng) -> Pending {
        let session = Session {
            a_index: fresh_index(&mut self.used, rng),
            b_index: fresh_index(&mut self.used, rng),
        };
        let mut initiation = wire::initiation(session.a_index, rng);
        if let Some(keys) = &self.pairs[pair].keys {
            // mac1 first: mac2 covers it.
            wire::set_mac1(&mut initiation, &keys.b.mac1_key);
            if let Some(c) = self.fresh_cookie(pair, A, now) {
                wire::set_mac2(&mut initiation, &c);
            }
        }
        let response = self.response(pair, session, now, rng);
        Pending {
            pair,
            session,
            initiation,
            response,
            rounds: [0; 2],
            done: false,
        }
    }

    fn fresh_cookie(&self, pair: usize, side: usize, now: Instant) -> Option<Mac> {
        self.cookies[pair][side]
            .filter(|(_, at)| now.duration_since(*at) < COOKIE_FRESH)
            .map(|(c, _)| c)
    }

    /// B's response for `session`, with mac1 (and a fresh cookie's mac2) in allow-list mode.
    fn response(
        &self,
        pair: usize,
        session: Session,
        now: Instant,
        rng: &mut impl Rng,
    ) -> [u8; RESPONSE_LEN] {
        let mut response = wire::response(session.b_index, session.a_index, rng);
        if let Some(keys) = &self.pairs[pair].keys {
            wire::set_mac1(&mut response, &keys.a.mac1_key);
            if let Some(c) = self.fresh_cookie(pair, B, now) {
                wire::set_mac2(&mut response, &c);
            }
        }
        response
    }

    /// Sets up one session on each pair in `todo` (repeats allowed), retrying lost ones.
    fn phase(
        &mut self,
        mut todo: Vec<usize>,
        rng: &mut impl Rng,
        rx: &mut RecvBatch,
        epoll: &Epoll,
    ) -> Result<(), SetupError> {
        let mut idle = 0;
        while !todo.is_empty() {
            let before = self.established();
            let mut failed = Vec::new();
            let mut at = 0;
            while at < todo.len() {
                let end = (at + self.chunk_len).min(todo.len());
                let lost = self.chunk(&todo[at..end], rng, rx, epoll)?;
                self.chunk_len = if lost.is_empty() {
                    (self.chunk_len * 2).min(1024)
                } else {
                    (self.chunk_len / 2).max(8)
                };
                failed.extend(lost);
                at = end;
            }
            idle = if self.established() == before {
                idle + 1
            } else {
                0
            };
            if idle == ATTEMPTS {
                return Err(SetupError::Incomplete {
                    established: self.established(),
                    wanted: self.wanted,
                    cookie_rounds: self.cookie_rounds,
                    unopened: self.unopened,
                });
            }
            failed.sort_unstable();
            todo = failed;
        }
        Ok(())
    }

    /// Sends one chunk's handshakes and waits for its responses, answering cookie replies on
    /// the way. Returns the pairs whose session was lost.
    fn chunk(
        &mut self,
        todo: &[usize],
        rng: &mut impl Rng,
        rx: &mut RecvBatch,
        epoll: &Epoll,
    ) -> Result<Vec<usize>, SetupError> {
        let now = Instant::now();
        let mut chunk: Vec<Pending> = todo.iter().map(|&p| self.pending(p, now, rng)).collect();
        // Initiations first: the target reads its socket in order.
        send_grouped(self.pairs, &chunk, A)?;
        send_grouped(self.pairs, &chunk, B)?;
        // Either side's index: which session, and which side picked it.
        let mut waiting: HashMap<u32, (usize, usize)> = HashMap::with_capacity(chunk.len() * 2);
        for (i, p) in chunk.iter().enumerate() {
            waiting.insert(p.session.a_index, (i, A));
            waiting.insert(p.session.b_index, (i, B));
        }
        let left = self.await_responses(&mut chunk, &waiting, rx, epoll)?;
        if left > 0 {
            // A target reading several sockets (the original wpex has one per CPU) may handle a
            // response before its initiation and drop it. A's index is still half-open, so B
            // answers again, with a fresh index since the target may have kept the first.
            let now = Instant::now();
            for (i, p) in chunk.iter_mut().enumerate().filter(|(_, p)| !p.done) {
                waiting.remove(&p.session.b_index);
                p.session.b_index = fresh_index(&mut self.used, rng);
                waiting.insert(p.session.b_index, (i, B));
                p.response = self.response(p.pair, p.session, now, rng);
                p.rounds[B] = 0;
            }
            send_grouped(self.pairs, &chunk, B)?;
            self.await_responses(&mut chunk, &waiting, rx, epoll)?;
        }
        Ok(chunk.iter().filter(|p| !p.done).map(|p| p.pair).collect())
    }

    /// Waits until every session of `chunk` is set up or nothing has happened for [`QUIET`],
    /// answering cookie replies on the way. Returns how many are still not set up.
    fn await_responses(
        &mut self,
        chunk: &mut [Pending],
        waiting: &HashMap<u32, (usize, usize)>,
        rx: &mut RecvBatch,
        epoll: &Epoll,
    ) -> Result<usize, SetupError> {
        let mut left = chunk.iter().filter(|p| !p.done).count();
        let mut ready = Vec::new();
        let mut last_progress = Instant::now();
        while left > 0 && last_progress.elapsed() < QUIET {
            let wait = QUIET.saturating_sub(last_progress.elapsed());
            ready.clear();
            epoll
                .wait(&mut ready, wait.as_millis().clamp(1, 50) as i32)
                .map_err(SetupError::Receive)?;
            let mut progress = false;
            for &token in &ready {
                let (pair, side) = (token as usize / 2, token as usize % 2);
                while rx
                    .recv(self.pairs[pair].side(side).as_fd(), Wait::No)
                    .map_err(SetupError::Receive)?
                    > 0
                {
                    for d in 0..rx.len() {
                        match self.receive(rx.datagram(d), pair, side, chunk, waiting)? {
                            Got::Nothing => {}
                            Got::Cookie => progress = true,
                            Got::Session => {
                                progress = true;
                                left -= 1;
                            }
                        }
                    }
                }
            }
            if progress {
                last_progress = Instant::now();
            }
        }
        Ok(left)
    }

    /// Handles one datagram that reached `side` of `pair`.
    fn receive(
        &mut self,
        datagram: &[u8],
        pair: usize,
        side: usize,
        chunk: &mut [Pending],
        waiting: &HashMap<u32, (usize, usize)>,
    ) -> Result<Got, SetupError> {
        if side == A
            && let Some((sender, receiver)) = wire::parse_response(datagram)
        {
            if let Some(&(i, A)) = waiting.get(&receiver) {
                let p = &mut chunk[i];
                if p.pair == pair && p.session.b_index == sender && !p.done {
                    p.done = true;
                    self.done[pair].push(p.session);
                    return Ok(Got::Session);
                }
            }
            return Ok(Got::Nothing);
        }
        // Anything else but a cookie reply to this side's handshake is a broadcast initiation
        // or a late answer to an abandoned attempt.
        let Some(&(i, picked)) =
            wire::cookie_reply_receiver(datagram).and_then(|r| waiting.get(&r))
        else {
            return Ok(Got::Nothing);
        };
        let p = &mut chunk[i];
        if picked != side || p.pair != pair || p.done || p.rounds[side] >= MAX_ROUNDS {
            return Ok(Got::Nothing);
        }
        let Some(keys) = self.pairs[pair].keys else {
            self.unopened += 1;
            return Ok(Got::Nothing);
        };
        // The initiation was addressed to B, the response to A.
        let (answered, addressee): (&mut [u8], _) = if side == A {
            (&mut p.initiation, keys.b.public)
        } else {
            (&mut p.response, keys.a.public)
        };
        let Some(cookie) = wire::open_cookie_reply(datagram, answered, &addressee.0) else {
            self.unopened += 1;
            return Ok(Got::Nothing);
        };
        wire::set_mac2(answered, &cookie);
        self.cookies[pair][side] = Some((cookie, Instant::now()));
        p.rounds[side] += 1;
        self.cookie_rounds += 1;
        let sockets = &self.pairs[pair];
        send_one(sockets.side(side), p.message(side))?;
        if side == A {
            // The response that went with the challenged initiation found no half-open index.
            send_one(&sockets.b, &p.response)?;
        }
        Ok(Got::Cookie)
    }
}

/// What one datagram did for setup.
enum Got {
    Nothing,
    Cookie,
    Session,
}

/// Sets up `per_pair` sessions on every pair: first one on each pair, so that a target which
/// challenges new addresses does so once per peer, then the rest pair by pair, so a chunk's
/// handshakes batch per socket.
pub fn establish(
    pairs: &[Pair],
    per_pair: usize,
    rng: &mut impl Rng,
) -> Result<Established, SetupError> {
    let wanted = pairs.len() * per_pair;
    let epoll = Epoll::new().map_err(SetupError::Receive)?;
    for (p, pair) in pairs.iter().enumerate() {
        for side in [A, B] {
            epoll
                .add(pair.side(side).as_fd(), (p * 2 + side) as u64)
                .map_err(SetupError::Receive)?;
        }
    }
    let mut setup = Setup {
        pairs,
        wanted,
        used: HashSet::with_capacity(wanted * 2),
        done: vec![Vec::with_capacity(per_pair); pairs.len()],
        cookies: vec![[None; 2]; pairs.len()],
        cookie_rounds: 0,
        unopened: 0,
        chunk_len: 64,
    };
    let mut rx = RecvBatch::new(2048);
    let first: Vec<usize> = if per_pair > 0 {
        (0..pairs.len()).collect()
    } else {
        Vec::new()
    };
    let rest: Vec<usize> = (0..pairs.len())
        .flat_map(|p| std::iter::repeat_n(p, per_pair.saturating_sub(1)))
        .collect();
    for todo in [first, rest] {
        setup.phase(todo, rng, &mut rx, &epoll)?;
    }
    Ok(Established {
        sessions: setup.done,
        cookie_rounds: setup.cookie_rounds,
    })
}
