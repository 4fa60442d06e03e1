//! The measurement: transport data through the target, one sender and one receiver thread.
//!
//! The sender goes round the flows (one per pair and direction), sending a batch of up to
//! [`BATCH`] datagrams on one flow per `sendmmsg`, each batch cycling through that flow's
//! sessions. Flat out it sends full batches back to back; with a rate it sleeps until a batch is
//! due, waking at most about 5,000 times a second so pacing costs little CPU on a small machine.
//! The receiver waits on all receiving sockets with epoll and reads them with `recvmmsg`.
//!
//! Timeline: warm-up (datagrams marked as such, not counted), then the measured phase, then a
//! drain pause for datagrams still queued. The target's CPU time is read when the measured phase
//! starts and again after the drain, so it covers the forwarding of the measured datagrams.
//! Latency is the receiver's clock at `recvmmsg` return minus the send time stamped just before
//! `sendmmsg`, both from one monotonic clock; it includes the generator's own queueing and, when
//! flat out, the target's full receive buffer.

use std::collections::HashSet;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::hist::Histogram;
use crate::procfs::{self, ProcError, UdpCounters};
use crate::setup::{Pair, Session};
use crate::sys::{BATCH, Epoll, RecvBatch, Wait, send_all, send_train};
use crate::wire;

/// At most this many sender wake-ups a second when paced.
const WAKEUPS_PER_SEC: u64 = 5000;
/// Sequence numbers beyond this are not tracked for duplicates (a 2 GiB bitmap).
const MAX_TRACKED_SEQ: u64 = 1 << 34;

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("receiver: {0}")]
    Receive(io::Error),
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Total datagram size (the UDP payload), header included.
    pub size: usize,
    /// Datagrams per second over all flows; `None` is flat out.
    pub rate: Option<u64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub both_ways: bool,
    /// Each flow's batch leaves as one GSO message (or a few, within the size limit).
    pub gso: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Measurement {
    pub warmup_sent: u64,
    /// Measured datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams the kernel refused, warm-up included.
    pub send_errors: u64,
    pub first_send_error: Option<String>,
    /// Length of the measured send phase.
    pub measured: Duration,
    pub delivered: u64,
    pub warmup_delivered: u64,
    pub duplicates: u64,
    /// Datagrams that were not our transport data of the right size.
    pub unexpected: u64,
    pub receive_errors: u64,
    pub latency: Histogram,
    pub target_cpu_ns: u64,
    pub generator_cpu_ns: u64,
    /// Machine-wide (network namespace) UDP receive-buffer drops during the measured phase.
    pub udp_rcvbuf_errors: u64,
    /// Of those, at the target's socket (it could not keep up)...
    pub target_socket_drops: u64,
    /// ... and at the generator's receiving sockets (the generator could not keep up).
    pub generator_socket_drops: u64,
}

/// The process under test and its port.
#[derive(Debug, Clone, Copy)]
pub struct TargetRef {
    pub pid: u32,
    pub port: u16,
}

/// One direction of one pair: the socket it sends from and the receiver indices it cycles.
struct Flow<'a> {
    socket: &'a UdpSocket,
    receivers: Vec<u32>,
    cursor: usize,
}

fn flows<'a>(pairs: &'a [Pair], sessions: &[Vec<Session>], both_ways: bool) -> Vec<Flow<'a>> {
    let mut flows = Vec::new();
    for (pair, sessions) in pairs.iter().zip(sessions) {
        flows.push(Flow {
            socket: &pair.a,
            receivers: sessions.iter().map(|s| s.b_index).collect(),
            cursor: 0,
        });
        if both_ways {
            flows.push(Flow {
                socket: &pair.b,
                receivers: sessions.iter().map(|s| s.a_index).collect(),
                cursor: 0,
            });
        }
    }
    flows.retain(|f| !f.receivers.is_empty());
    flows
}

/// CPU readings taken together.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    target_cpu: u64,
    generator_cpu: u64,
    udp: UdpCounters,
    /// Drops at the target's socket and at the generator's.
    drops: (u64, u64),
}

fn snapshot(target: TargetRef, generator: &HashSet<u16>) -> Result<Snapshot, ProcError> {
    Ok(Snapshot {
        target_cpu: procfs::cpu_ns(target.pid)?,
        generator_cpu: procfs::cpu_ns(std::process::id())?,
        udp: procfs::udp_counters()?,
        drops: procfs::udp_drops(target.port, generator)?,
    })
}

#[derive(Debug, Default)]
struct Sent {
    warmup: u64,
    measured: u64,
    errors: u64,
    first_error: Option<String>,
    start: Option<Result<Snapshot, ProcError>>,
    measured_for: Duration,
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Sent {
    /// Counts a batch of `n` datagrams of which the kernel took `sent`, and keeps the first
    /// error.
    fn count(&mut self, n: usize, sent: usize, error: Option<io::Error>, measured: bool) {
        if measured {
            self.measured += sent as u64;
        } else {
            self.warmup += sent as u64;
        }
        self.errors += (n - sent) as u64;
        if let Some(e) = error {
            self.first_error.get_or_insert_with(|| e.to_string());
        }
    }
}

/// When batches are due: flat out always a full one; paced, `rate` datagrams a second from
/// `start`, in batches of at least `min_batch` so the sender wakes at most
/// [`WAKEUPS_PER_SEC`] times a second.
struct Pace {
    rate: Option<u64>,
    min_batch: u64,
    start: Instant,
    /// Datagrams sent or refused so far.
    attempted: u64,
}

impl Pace {
    fn new(rate: Option<u64>, start: Instant) -> Self {
        let min_batch = rate.map_or(BATCH as u64, |r| {
            (r / WAKEUPS_PER_SEC).clamp(1, BATCH as u64)
        });
        Self {
            rate,
            min_batch,
            start,
            attempted: 0,
        }
    }

    /// How many datagrams to send at `now`, or, when fewer than a batch are due, the instant
    /// a batch will be.
    fn due(&self, now: Instant) -> Result<usize, Instant> {
        let Some(rate) = self.rate else {
            return Ok(BATCH);
        };
        let due = (rate as f64 * now.saturating_duration_since(self.start).as_secs_f64()) as u64;
        let due = due.saturating_sub(self.attempted);
        if due < self.min_batch {
            return Err(self.start
                + Duration::from_secs_f64((self.attempted + self.min_batch) as f64 / rate as f64));
        }
        Ok(due.min(BATCH as u64) as usize)
    }
}

/// Stamps `bufs` for `flow`, each for the next receiver in its cycle with the next sequence
/// number from `seq`, then all with one send time; returns them as the batch to send.
fn stamp_batch<'b>(
    bufs: &'b mut [Vec<u8>],
    flow: &mut Flow<'_>,
    seq: &mut u64,
    measured: bool,
    epoch: Instant,
) -> [&'b [u8]; BATCH] {
    for buf in bufs.iter_mut() {
        wire::stamp(buf, flow.receivers[flow.cursor], *seq, measured);
        flow.cursor = (flow.cursor + 1) % flow.receivers.len();
        *seq += 1;
    }
    let sent_ns = nanos_since(epoch);
    let mut refs: [&[u8]; BATCH] = [&[]; BATCH];
    for (r, buf) in refs.iter_mut().zip(bufs) {
        wire::stamp_time(buf, sent_ns);
        *r = buf;
    }
    refs
}

fn send_loop(
    flows: &mut [Flow<'_>],
    plan: &Plan,
    epoch: Instant,
    target: TargetRef,
    generator: &HashSet<u16>,
    rng: &mut impl RngCore,
) -> Sent {
    let mut out = Sent::default();
    if flows.is_empty() {
        return out;
    }
    let mut bufs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| wire::data_template(plan.size, rng))
        .collect();
    let mut train = Vec::with_capacity(BATCH * plan.size);
    let start = Instant::now();
    let measure_at = start + plan.warmup;
    let end = measure_at + plan.duration;
    let mut pace = Pace::new(plan.rate, start);
    let (mut measured, mut measure_start) = (false, start);
    let (mut seq, mut next_flow) = (0u64, 0usize);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !measured && now >= measure_at {
            measured = true;
            out.start = Some(snapshot(target, generator));
            measure_start = Instant::now();
            // Reading /proc takes a few milliseconds with many sockets: pace on from here rather
            // than catch up with a burst.
            pace.start += measure_start - now;
        }
        let n = match pace.due(now) {
            Ok(n) => n,
            Err(at) => {
                let boundary = if measured { end } else { measure_at };
                std::thread::sleep(at.min(boundary).saturating_duration_since(now));
                continue;
            }
        };
        let flow_count = flows.len();
        let flow = &mut flows[next_flow];
        next_flow = (next_flow + 1) % flow_count;
        let refs = stamp_batch(&mut bufs[..n], flow, &mut seq, measured, epoch);
        let (sent, error) = send(flow.socket, &refs[..n], plan.gso, &mut train);
        pace.attempted += n as u64;
        out.count(n, sent, error, measured);
    }
    out.measured_for = if measured {
        measure_start.elapsed()
    } else {
        Duration::ZERO
    };
    out
}

/// Sends `datagrams` from `socket`, as GSO trains built in `train` if `gso`, else one by one.
/// Returns how many were sent and the first error.
fn send(
    socket: &UdpSocket,
    datagrams: &[&[u8]],
    gso: bool,
    train: &mut Vec<u8>,
) -> (usize, Option<io::Error>) {
    if gso {
        send_trains(socket.as_fd(), datagrams, train)
    } else {
        send_all(socket.as_fd(), datagrams, &[])
    }
}

/// Sends same-size `datagrams` as GSO messages of as many as fit in one. Returns how many
/// datagrams were sent and the first error: a refused message loses all of its datagrams.
fn send_trains(
    fd: std::os::fd::BorrowedFd<'_>,
    datagrams: &[&[u8]],
    train: &mut Vec<u8>,
) -> (usize, Option<io::Error>) {
    let Some(size) = datagrams.first().map(|d| d.len()).filter(|s| *s > 0) else {
        return (0, None);
    };
    let segment = u16::try_from(size).unwrap_or(u16::MAX);
    let (mut sent, mut first_error) = (0, None);
    // One GSO message carries at most one UDP payload's worth.
    for chunk in datagrams.chunks((wire::DATA_MAX_LEN / size).max(1)) {
        train.clear();
        for d in chunk {
            train.extend_from_slice(d);
        }
        match send_train(fd, train, segment) {
            Ok(()) => sent += chunk.len(),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    (sent, first_error)
}

#[derive(Debug, Default)]
struct Received {
    delivered: u64,
    warmup: u64,
    duplicates: u64,
    unexpected: u64,
    errors: u64,
    latency: Histogram,
    seen: Vec<u64>,
}

impl Received {
    fn take(&mut self, datagram: &[u8], truncated: bool, size: usize, now_ns: u64) {
        let Some(p) = wire::parse_data(datagram, size).filter(|_| !truncated) else {
            self.unexpected += 1;
            return;
        };
        if !p.measured {
            self.warmup += 1;
            return;
        }
        if p.seq < MAX_TRACKED_SEQ {
            let (word, bit) = ((p.seq / 64) as usize, 1u64 << (p.seq % 64));
            if word >= self.seen.len() {
                self.seen.resize((word + 1).next_power_of_two(), 0);
            }
            if self.seen[word] & bit != 0 {
                self.duplicates += 1;
                return;
            }
            self.seen[word] |= bit;
        }
        self.delivered += 1;
        self.latency.record(now_ns.saturating_sub(p.sent_ns));
    }
}

fn receive_loop(
    sockets: &[&UdpSocket],
    size: usize,
    epoch: Instant,
    stop: &AtomicBool,
) -> Result<Received, TrafficError> {
    let poll = Epoll::new().map_err(TrafficError::Receive)?;
    for (token, s) in sockets.iter().enumerate() {
        poll.add(s.as_fd(), token as u64)
            .map_err(TrafficError::Receive)?;
    }
    // One byte more than expected, so a longer datagram shows up as truncated.
    let mut rx = RecvBatch::new((size + 1).max(2048));
    let mut got = Received::default();
    let mut ready = Vec::new();
    while !stop.load(Ordering::Acquire) {
        ready.clear();
        poll.wait(&mut ready, 10).map_err(TrafficError::Receive)?;
        for &token in &ready {
            let Some(socket) = usize::try_from(token).ok().and_then(|t| sockets.get(t)) else {
                continue;
            };
            // A few batches per socket per round, so one busy socket cannot starve the rest.
            for _ in 0..8 {
                let n = match rx.recv(socket.as_fd(), Wait::No) {
                    Ok(n) => n,
                    // A connected socket reports an ICMP error from an earlier send here.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        got.errors += 1;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(TrafficError::Receive(e)),
                };
                let now_ns = nanos_since(epoch);
                for i in 0..n {
                    got.take(rx.datagram(i), rx.truncated(i), size, now_ns);
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
    Ok(got)
}

/// Sends transport data on every session of `sessions` as `plan` says, and measures what the
/// target delivers.
pub fn run(
    pairs: &[Pair],
    sessions: &[Vec<Session>],
    plan: &Plan,
    target: TargetRef,
    rng: &mut impl RngCore,
) -> Result<Measurement, TrafficError> {
    let mut flows = flows(pairs, sessions, plan.both_ways);
    let generator = generator_ports(pairs);
    let receivers = receiving_sockets(pairs, plan.both_ways);
    let epoch = Instant::now();
    let stop = AtomicBool::new(false);
    let (mut sent, end, received) = std::thread::scope(|scope| {
        let receiver = std::thread::Builder::new()
            .name("receiver".into())
            .spawn_scoped(scope, || receive_loop(&receivers, plan.size, epoch, &stop));
        let receiver = match receiver {
            Ok(r) => r,
            Err(e) => return (Sent::default(), Ok(None), Err(TrafficError::Receive(e))),
        };
        let sent = send_loop(&mut flows, plan, epoch, target, &generator, rng);
        std::thread::sleep(plan.drain);
        let end = snapshot(target, &generator).map(Some);
        stop.store(true, Ordering::Release);
        let received = receiver
            .join()
            .unwrap_or(Err(TrafficError::Panicked("receiver")));
        (sent, end, received)
    });
    let received = received?;
    let end = end?;
    let (Some(start), Some(end)) = (sent.start.take().transpose()?, end) else {
        // The measured phase never began: a zero duration was refused on the command line.
        return Ok(Measurement::default());
    };
    Ok(measurement(sent, received, start, end))
}

/// The generator's ports, all its sockets', to tell its socket drops from the target's.
fn generator_ports(pairs: &[Pair]) -> HashSet<u16> {
    pairs
        .iter()
        .flat_map(|p| [&p.a, &p.b])
        .filter_map(|s| s.local_addr().ok())
        .map(|a| a.port())
        .collect()
}

/// The sockets that receive the flows: every pair's B, and A too when both ways.
fn receiving_sockets(pairs: &[Pair], both_ways: bool) -> Vec<&UdpSocket> {
    pairs
        .iter()
        .flat_map(|p| {
            let a = both_ways.then_some(&p.a);
            std::iter::once(&p.b).chain(a)
        })
        .collect()
}

/// The figures of a run: what was sent and received, and the /proc readings' differences
/// between the measured phase's `start` and the drain's `end`.
fn measurement(sent: Sent, received: Received, start: Snapshot, end: Snapshot) -> Measurement {
    Measurement {
        warmup_sent: sent.warmup,
        sent: sent.measured,
        send_errors: sent.errors,
        first_send_error: sent.first_error,
        measured: sent.measured_for,
        delivered: received.delivered,
        warmup_delivered: received.warmup,
        duplicates: received.duplicates,
        unexpected: received.unexpected,
        receive_errors: received.errors,
        latency: received.latency,
        target_cpu_ns: end.target_cpu.saturating_sub(start.target_cpu),
        generator_cpu_ns: end.generator_cpu.saturating_sub(start.generator_cpu),
        udp_rcvbuf_errors: end
            .udp
            .rcvbuf_errors
            .saturating_sub(start.udp.rcvbuf_errors),
        target_socket_drops: end.drops.0.saturating_sub(start.drops.0),
        generator_socket_drops: end.drops.1.saturating_sub(start.drops.1),
    }
}
