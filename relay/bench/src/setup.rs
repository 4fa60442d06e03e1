//! Peer sockets and sessions: what a relay must have learned before it forwards transport data.
//!
//! Each peer pair has two UDP sockets on 127.0.0.1, A and B, connected to the target. For each
//! session A sends a handshake initiation with a fresh random sender index, then B sends a
//! response with its own index whose receiver index is A's; the target forwards the response to
//! A, and a session counts as set up only when A has received it. That is all open mode needs:
//!
//! - The relay (relay/src/relay.rs) registers the initiation's index as half-open and
//!   broadcasts the initiation to the endpoints it knows; B need not be one of them, since B
//!   never needs the initiation. A response is accepted from any source as long as its receiver
//!   index is half-open (5 s), so B does not have to send anything first.
//! - Responses must be sent after their initiation has been handled. Initiations go out first,
//!   then the responses of the same chunk: the target reads its socket in order.
//! - The relay limits initiations per source IP (`--source-rate`, 20/s, burst 100) and every
//!   peer here is 127.0.0.1, so the benchmark starts our relay with `--source-rate 0`.
//!
//! Chunks grow while every handshake gets through and shrink when some are lost (a target with
//! a small receive buffer drops a burst); lost sessions are retried with fresh indices, so a
//! half-open index left behind by a lost response is never reused.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::{BATCH, RecvBatch, Wait, send_all};
use crate::wire;

/// Receive buffer of each peer socket; the kernel caps it at net.core.rmem_max.
const PEER_BUFFER: usize = 4 << 20;
/// Rounds of retries for sessions whose response did not come back.
const ATTEMPTS: usize = 5;
/// How long to wait for a chunk's responses after the last one arrived.
const QUIET: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("peer socket: {0}")]
    Socket(io::Error),
    #[error("sending handshakes: {0}")]
    Send(io::Error),
    #[error("reading handshake responses: {0}")]
    Receive(io::Error),
    #[error(
        "only {established} of {wanted} sessions were set up after {ATTEMPTS} attempts \
         (does the target forward handshake responses? does it rate-limit handshakes per source IP? is its table full?)"
    )]
    Incomplete { established: usize, wanted: usize },
}

/// Two peers that talk to each other through the target.
pub struct Pair {
    pub a: UdpSocket,
    pub b: UdpSocket,
}

/// One session: A's index (B sends to it) and B's index (A sends to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub a_index: u32,
    pub b_index: u32,
}

fn peer_socket(target: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(PEER_BUFFER);
    socket.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
    // Connected: sends need no address, and only the target's datagrams are received.
    socket.connect(&target.into())?;
    Ok(socket.into())
}

pub fn open_pairs(count: usize, target: SocketAddrV4) -> Result<Vec<Pair>, SetupError> {
    (0..count)
        .map(|_| {
            Ok(Pair {
                a: peer_socket(target).map_err(SetupError::Socket)?,
                b: peer_socket(target).map_err(SetupError::Socket)?,
            })
        })
        .collect()
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

/// A session being set up: which pair, and the indices of this attempt.
#[derive(Debug, Clone, Copy)]
struct Pending {
    pair: usize,
    session: Session,
}

fn fresh_index(used: &mut HashSet<u32>, rng: &mut impl Rng) -> u32 {
    loop {
        let i = rng.r#gen::<u32>();
        if used.insert(i) {
            return i;
        }
    }
}

/// Sends one message per pending session from the socket `side` picks, batching consecutive
/// messages of the same pair into one `sendmmsg`.
fn send_grouped<const N: usize>(
    pairs: &[Pair],
    chunk: &[Pending],
    side: impl Fn(&Pair) -> &UdpSocket,
    mut message: impl FnMut(&Session) -> [u8; N],
) -> Result<(), SetupError> {
    let mut at = 0;
    while at < chunk.len() {
        let pair = chunk[at].pair;
        let run = chunk[at..]
            .iter()
            .take(BATCH)
            .take_while(|p| p.pair == pair)
            .count();
        let messages: Vec<[u8; N]> = chunk[at..at + run]
            .iter()
            .map(|p| message(&p.session))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
        let (_, error) = send_all(side(&pairs[pair]).as_fd(), &refs, &[]);
        // A refused connected send means the target is gone (ECONNREFUSED): no use going on.
        if let Some(e) = error {
            return Err(SetupError::Send(e));
        }
        at += run;
    }
    Ok(())
}

/// Sets up `per_pair` sessions on every pair. Returns them by pair.
pub fn establish(
    pairs: &[Pair],
    per_pair: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<Session>>, SetupError> {
    let wanted = pairs.len() * per_pair;
    let mut used = HashSet::with_capacity(wanted * 2);
    let mut done: Vec<Vec<Session>> = vec![Vec::with_capacity(per_pair); pairs.len()];
    // Pair by pair, so a chunk's handshakes batch per socket.
    let mut todo: Vec<usize> = (0..pairs.len())
        .flat_map(|p| std::iter::repeat_n(p, per_pair))
        .collect();
    let mut chunk_len = 64usize;
    let mut rx = RecvBatch::new(2048);
    for _ in 0..ATTEMPTS {
        let mut failed = Vec::new();
        let mut at = 0;
        while at < todo.len() {
            let end = (at + chunk_len).min(todo.len());
            let chunk: Vec<Pending> = todo[at..end]
                .iter()
                .map(|&pair| Pending {
                    pair,
                    session: Session {
                        a_index: fresh_index(&mut used, rng),
                        b_index: fresh_index(&mut used, rng),
                    },
                })
                .collect();
            send_grouped(
                pairs,
                &chunk,
                |p| &p.a,
                |s| wire::initiation(s.a_index, rng),
            )?;
            send_grouped(
                pairs,
                &chunk,
                |p| &p.b,
                |s| wire::response(s.b_index, s.a_index, rng),
            )?;
            let mut waiting: HashMap<u32, Pending> =
                chunk.iter().map(|p| (p.session.a_index, *p)).collect();
            let sockets: Vec<usize> = {
                let mut v: Vec<usize> = chunk.iter().map(|p| p.pair).collect();
                v.dedup();
                v
            };
            let mut last_progress = Instant::now();
            while !waiting.is_empty() && last_progress.elapsed() < QUIET {
                let mut progress = false;
                for &pair in &sockets {
                    while rx
                        .recv(pairs[pair].a.as_fd(), Wait::No)
                        .map_err(SetupError::Receive)?
                        > 0
                    {
                        for i in 0..rx.len() {
                            let Some((sender, receiver)) = wire::parse_response(rx.datagram(i))
                            else {
                                continue; // a broadcast initiation
                            };
                            if let Some(p) = waiting.get(&receiver)
                                && p.session.b_index == sender
                            {
                                done[p.pair].push(p.session);
                                waiting.remove(&receiver);
                                progress = true;
                            }
                        }
                    }
                }
                if progress {
                    last_progress = Instant::now();
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            chunk_len = if waiting.is_empty() {
                (chunk_len * 2).min(1024)
            } else {
                (chunk_len / 2).max(8)
            };
            failed.extend(waiting.values().map(|p| p.pair));
            at = end;
        }
        if failed.is_empty() {
            return Ok(done);
        }
        failed.sort_unstable();
        todo = failed;
    }
    Err(SetupError::Incomplete {
        established: done.iter().map(Vec::len).sum(),
        wanted,
    })
}
