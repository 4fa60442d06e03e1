//! UDP IO around the sans-IO core: several SO_REUSEPORT sockets, a thread for each, one timer
//! task, and one thread for the full mac1 scans the core asks for.
//!
//! Each worker thread reads a batch with one blocking `recvmmsg` (and GRO, `server/recv.rs`):
//! one system call per wake-up, where a readiness loop needs `epoll_wait` as well. It decides
//! every datagram with one clock reading. Transport data on a route the core published
//! (`routes.rs`) is forwarded without the core's lock, so it never waits for handshakes,
//! expiry, scrapes or key reloads; anything else
//! is decided by the core under one lock for the rest of the batch. Then the worker sends what
//! the batch produced with `sendmmsg`, GRO trains as GSO messages (`server/send.rs`). The core
//! is never locked across IO nor across a scan: a scan of thousands of keys runs on its own
//! thread (`server/scan.rs`, a queue per scan class) and takes the lock only to hand in its
//! result.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::RngCore;
use socket2::{Domain, Protocol, Socket, Type};

use crate::shared::{Counters, SharedRelay, lock};
use wpex_proto::Worker;
use wpex_proto::{Config, Output, Relay};

mod recv;
mod scan;
mod send;

pub use send::disable_gso;

use scan::ScanQueue;

/// Why the sockets could not be bound.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are named by the messages
pub enum ServerError {
    /// `--bind` names no address.
    #[error("cannot resolve bind address '{addr}': {source}")]
    Resolve { addr: String, source: io::Error },
    /// Binding failed for another reason than the port being taken.
    #[error("failed to listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// Another process (usually another relay) holds the port.
    #[error(
        "UDP {addr} is already in use (another wpex relay?): stop it, or pick another --port or --bind"
    )]
    InUse { addr: SocketAddr },
}

/// Where to listen: `--bind` empty means dual-stack on every address.
fn listen_addrs(bind: &str, port: u16) -> Result<Vec<SocketAddr>, ServerError> {
    if bind.is_empty() {
        return Ok(vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        ]);
    }
    let trimmed = bind.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    (bind, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|source| ServerError::Resolve {
            addr: bind.to_owned(),
            source,
        })
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Dual-stack: IPv4 peers arrive as IPv4-mapped addresses.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
    // Bursts of handshakes and data must not be dropped by a small default buffer.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Fails if something already listens on `addr`. The workers' `SO_REUSEPORT` would otherwise let
/// a second relay bind beside a running one, and the kernel would split the peers' flows between
/// two processes with separate tables. A probe without `SO_REUSEPORT` cannot share the port.
fn ensure_free(addr: SocketAddr) -> Result<(), ServerError> {
    let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| ServerError::Listen { addr, source })?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        probe
            .set_only_v6(false)
            .map_err(|source| ServerError::Listen { addr, source })?;
    }
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ServerError::InUse { addr }),
        Err(source) => Err(ServerError::Listen { addr, source }),
        Ok(()) => Ok(()),
    }
}

/// Held for the life of the process: two relays starting at the same instant could both pass
/// [`ensure_free`] before either binds. An abstract socket is per network namespace and is
/// released by the kernel when the process dies, so nothing is left behind.
fn claim(addr: SocketAddr) -> Result<std::os::unix::net::UnixDatagram, ServerError> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("wpex-relay-udp-{addr}");
    let lock = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| std::os::unix::net::UnixDatagram::bind_addr(&a));
    match lock {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ServerError::InUse { addr }),
        Err(source) => Err(ServerError::Listen { addr, source }),
        Ok(lock) => Ok(lock),
    }
}

/// The sockets of one listen address, and the claim on it.
struct Bound {
    sockets: Vec<UdpSocket>,
    _claim: Option<std::os::unix::net::UnixDatagram>,
}

/// Binds `workers` sockets to one address; with port 0 they all share the first one's port.
fn bind_all(candidates: &[SocketAddr], workers: usize) -> Result<Bound, ServerError> {
    let mut last_error = None;
    for &addr in candidates {
        // Port 0 asks the kernel for a free port: nothing to claim or probe. A served address
        // stops here; any other failure (no IPv6, say) moves on to the next candidate.
        let claim = if addr.port() == 0 {
            None
        } else {
            match claim(addr).and_then(|c| ensure_free(addr).map(|()| c)) {
                Ok(c) => Some(c),
                Err(e @ ServerError::InUse { .. }) => return Err(e),
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            }
        };
        let first = match udp_socket(addr) {
            Ok(s) => s,
            Err(source) => {
                last_error = Some(ServerError::Listen { addr, source });
                continue;
            }
        };
        let actual = first
            .local_addr()
            .map_err(|source| ServerError::Listen { addr, source })?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets
                .push(udp_socket(actual).map_err(|source| ServerError::Listen { addr, source })?);
        }
        return Ok(Bound {
            sockets,
            _claim: claim,
        });
    }
    Err(last_error.unwrap_or(ServerError::Resolve {
        addr: String::new(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address to bind"),
    }))
}

/// The relay's sockets and the shared core, ready to serve.
pub struct Server {
    relay: SharedRelay,
    sockets: Vec<Arc<UdpSocket>>,
    _claim: Option<std::os::unix::net::UnixDatagram>,
    counters: Arc<Counters>,
}

impl Server {
    /// Binds the sockets.
    pub fn bind(
        config: Config,
        bind: &str,
        port: u16,
        workers: usize,
    ) -> Result<Self, ServerError> {
        let bound = bind_all(&listen_addrs(bind, port)?, workers.max(1))?;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Ok(Self {
            relay: Arc::new(Mutex::new(Relay::new(config, Instant::now(), seed))),
            sockets: bound.sockets.into_iter().map(Arc::new).collect(),
            _claim: bound._claim,
            counters: Arc::default(),
        })
    }

    /// The first socket's address (the port chosen, when `port` was 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }

    /// The core the workers share.
    pub fn relay(&self) -> SharedRelay {
        self.relay.clone()
    }

    /// The counters kept outside the core, for the metrics and the key watcher.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Relays until `shutdown` completes: a thread per socket receives, decides and sends; a
    /// task of the runtime drives the core's timers.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let scans = Arc::new(ScanQueue::default());
        let scanner = {
            let (relay, errors, scans) = (self.relay.clone(), self.counters.clone(), scans.clone());
            std::thread::Builder::new()
                .name("wpex-scan".into())
                .spawn(move || scan::scan_loop(&relay, &scans, &errors))
        };
        if let Err(e) = scanner {
            scans.close();
            tracing::error!(%e, "cannot start the scan thread; handshakes that need a scan are dropped");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        for (i, socket) in self.sockets.iter().enumerate() {
            let (socket, relay, errors, scans, stop) = (
                socket.clone(),
                self.relay.clone(),
                self.counters.clone(),
                scans.clone(),
                stop.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("wpex-recv-{i}"))
                .spawn(move || receive_loop(&socket, &relay, &errors, &scans, &stop));
            match spawned {
                Ok(handle) => receivers.push(handle),
                Err(e) => tracing::error!(%e, "cannot start a receive thread"),
            }
        }
        let timer = tokio::spawn(timer_loop(self.relay.clone()));
        shutdown.await;
        timer.abort();
        // The receive threads see the flag when their call returns: at once, woken by the
        // shutdown, or within their receive timeout.
        stop.store(true, Ordering::Relaxed);
        for socket in &self.sockets {
            let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Read);
        }
        let joined = tokio::task::spawn_blocking(move || {
            for handle in receivers {
                let _ = handle.join();
            }
            scans.close();
        });
        let _ = joined.await;
    }
}

/// What an output sends, and to whom: the datagram itself, or a reply of the relay's own.
fn transmissions<'a>(output: &'a Output, datagram: &'a [u8]) -> (&'a [u8], &'a [SocketAddr]) {
    match output {
        Output::Forward(to) => (datagram, std::slice::from_ref(to)),
        Output::ForwardBoth(to) => (datagram, to),
        Output::Broadcast(to) => (datagram, to),
        Output::CookieReply(to, reply) => (reply, std::slice::from_ref(to)),
        Output::Scan(_) | Output::Drop(_) => (datagram, &[]),
    }
}

/// A message being planned by [`plan_sends`]: `count` datagrams, `len` bytes in all, in
/// `parts[first..]`.
struct Planned {
    to: SocketAddr,
    first: usize,
    parts: usize,
    count: usize,
    len: usize,
    segment: usize,
    /// A forwarded datagram's message, which more may join: where its last part starts and
    /// ends in `storage`.
    open: Option<Range<usize>>,
}

impl Planned {
    /// A message of one datagram, `bytes`, whose part is `parts[first]`.
    #[inline]
    fn new(to: SocketAddr, first: usize, bytes: &[u8], open: Option<Range<usize>>) -> Self {
        Self {
            to,
            first,
            parts: 1,
            count: 1,
            len: bytes.len(),
            segment: bytes.len(),
            open,
        }
    }

    /// Whether the datagram at `range`, forwarded to `to`, may join this open message: to the
    /// same endpoint, every datagram so far of full size, this one not longer, and room for one
    /// more.
    #[inline]
    fn admits(&self, to: SocketAddr, range: &Range<usize>, gso: usize) -> bool {
        self.to == to
            && !range.is_empty()
            && range.len() <= self.segment
            && self.len.is_multiple_of(self.segment)
            && self.count < gso
            && self.len + range.len() <= send::GSO_MAX_BYTES
    }

    /// Adds the datagram at `range` of `storage`, which [`Planned::admits`] allowed; `tail` is
    /// where the message's last part lies (its `open`).
    #[inline]
    fn join<'a>(
        &mut self,
        tail: Range<usize>,
        range: &Range<usize>,
        storage: &'a [u8],
        parts: &mut Vec<&'a [u8]>,
    ) {
        if tail.end == range.start {
            // Back to back with the last part: it grows, and the kernel gets one iovec.
            parts[self.first + self.parts - 1] = &storage[tail.start..range.end];
            self.open = Some(tail.start..range.end);
        } else {
            parts.push(&storage[range.clone()]);
            self.parts += 1;
            self.open = Some(range.clone());
        }
        self.count += 1;
        self.len += range.len();
    }

    /// The message to send, its parts taken from `parts`.
    #[inline]
    fn transmit<'a>(&self, parts: &'a [&'a [u8]]) -> send::Transmit<'a> {
        send::Transmit {
            to: self.to,
            parts: match self.parts {
                1 => send::Parts::One(parts[self.first]),
                n => send::Parts::Many(&parts[self.first..self.first + n]),
            },
            segment: self.segment,
        }
    }
}

/// The messages a batch's outputs send. Consecutive datagrams forwarded to the same endpoint,
/// all of one size but the last, are joined into one GSO message of up to `gso` datagrams,
/// whether they came as one GRO train or one by one; everything else goes alone. Nothing is
/// copied: datagrams back to back in `storage` (a train's, `stride` apart) stay one part, and
/// others become parts of their own, which `parts` holds.
fn plan_sends<'a>(
    outputs: &'a [(Range<usize>, Output)],
    storage: &'a [u8],
    gso: usize,
    parts: &'a mut Vec<&'a [u8]>,
) -> Vec<send::Transmit<'a>> {
    parts.clear();
    let mut plans: Vec<Planned> = Vec::with_capacity(outputs.len());
    for (range, output) in outputs {
        if let (Output::Forward(to), Some(last)) = (output, plans.last_mut())
            && let Some(tail) = last.open.clone()
            && last.admits(*to, range, gso)
        {
            last.join(tail, range, storage, parts);
            continue;
        }
        let (bytes, targets) = transmissions(output, &storage[range.clone()]);
        let open = match output {
            Output::Forward(_) if !range.is_empty() => Some(range.clone()),
            _ => None,
        };
        for to in targets {
            parts.push(bytes);
            plans.push(Planned::new(*to, parts.len() - 1, bytes, open.clone()));
        }
    }
    let parts: &'a [&'a [u8]] = parts;
    plans.iter().map(|p| p.transmit(parts)).collect()
}

/// Datagrams read per system call (`recvmmsg`).
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Room for one received buffer: with GRO the kernel may coalesce a train of same-size datagrams
/// from one source into it, up to 64 KiB.
const SLOT: usize = 1 << 16;

/// Where each datagram of a GRO train lies in `storage`: `stride` apart, the last maybe shorter.
fn segments(start: usize, len: usize, stride: usize) -> impl Iterator<Item = Range<usize>> {
    let stride = if stride == 0 { len.max(1) } else { stride };
    let count = len.div_ceil(stride).max(1);
    (0..count).map(move |k| start + k * stride..start + len.min((k + 1) * stride))
}

/// How long a receive thread sleeps in the kernel at most before it looks at its stop flag.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Decides every datagram of a batch, in order, into `outputs`, with one clock reading.
/// Transport data and cookie replies on a published route are forwarded without the core; the
/// lock is taken at the first datagram that needs the core and held to the end of the batch.
/// Both are gone when this returns, before any IO.
fn decide_batch(
    worker: &mut Worker,
    relay: &SharedRelay,
    socket: &Arc<UdpSocket>,
    scans: &ScanQueue,
    received: &[quinn_udp::RecvMeta],
    storage: &mut [u8],
    outputs: &mut Vec<(Range<usize>, Output)>,
) {
    let now = Instant::now();
    let batch = worker.batch(now);
    let mut core: Option<MutexGuard<'_, Relay>> = None;
    for (i, m) in received.iter().enumerate() {
        for range in segments(i * SLOT, m.len.min(SLOT), m.stride) {
            let datagram = &mut storage[range.clone()];
            if let Some(to) = batch.forward(m.addr, datagram) {
                outputs.push((range, Output::Forward(to)));
                continue;
            }
            let core = core.get_or_insert_with(|| lock(relay));
            let output = core.handle_input(now, m.addr, datagram);
            if let Output::Scan(request) = &output {
                scan::queue_scan(core, scans, request, m.addr, datagram, socket);
            }
            outputs.push((range, output));
        }
    }
}

/// Sends everything a batch produced in as few `sendmmsg` calls as possible, runs of same-size
/// datagrams to one destination as one GSO message each; `gso` is the most a message may carry.
fn send_outputs(
    socket: &UdpSocket,
    gso: usize,
    outputs: &[(Range<usize>, Output)],
    storage: &[u8],
    errors: &Counters,
) {
    // A flood is all drops: nothing to plan, nothing to allocate.
    if outputs
        .iter()
        .all(|(_, o)| matches!(o, Output::Drop(_) | Output::Scan(_)))
    {
        return;
    }
    let gso = if send::gso_enabled() { gso } else { 1 };
    let mut parts = Vec::new();
    let sends = plan_sends(outputs, storage, gso, &mut parts);
    send::send_all(socket, &sends, |to, e| errors.io_error("send", Some(to), e));
}

/// Sets up `socket` for [`recv::receive`]: quinn-udp's options (GRO, no fragmentation) but
/// for the control messages the relay does not read, then blocking with a timeout. Returns how
/// many datagrams a GSO message may carry.
fn prepare(socket: &UdpSocket) -> io::Result<usize> {
    let gso = match quinn_udp::UdpSocketState::new(socket.into()) {
        Ok(state) => state.max_gso_segments(),
        Err(e) => {
            tracing::warn!(%e, "socket options for batched IO unavailable; no GSO");
            1
        }
    };
    recv::skip_unread_control(socket);
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    Ok(gso)
}

/// A receive thread: reads a batch with one blocking `recvmmsg`, decides it, sends what it
/// produced, until `stop` is set.
fn receive_loop(
    socket: &Arc<UdpSocket>,
    relay: &SharedRelay,
    errors: &Counters,
    scans: &ScanQueue,
    stop: &AtomicBool,
) {
    let gso = match prepare(socket) {
        Ok(gso) => gso,
        Err(e) => {
            tracing::error!(%e, "cannot set up a receive socket; it is not served");
            return;
        }
    };
    let mut buffers = recv::Buffers::new();
    let mut storage = vec![0u8; SLOT * BATCH];
    let mut meta = [quinn_udp::RecvMeta::default(); BATCH];
    let mut outputs: Vec<(Range<usize>, Output)> = Vec::with_capacity(BATCH);
    let mut worker = Worker::new(lock(relay).routes().clone());
    loop {
        let received = recv::receive(socket, &mut buffers, &mut storage, &mut meta);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let n = match received {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                errors.io_error("receive", None, &e);
                continue;
            }
        };
        decide_batch(
            &mut worker,
            relay,
            socket,
            scans,
            &meta[..n],
            &mut storage,
            &mut outputs,
        );
        send_outputs(socket, gso, &outputs, &storage, errors);
        outputs.clear();
    }
}

/// Drives expiry and cookie rotation. Wakes at least every second, because new entries may
/// bring the next deadline forward while it sleeps.
async fn timer_loop(relay: SharedRelay) {
    loop {
        let next = lock(&relay).poll_timeout();
        let cap = Instant::now() + Duration::from_secs(1);
        tokio::time::sleep_until(next.min(cap).into()).await;
        lock(&relay).handle_timeout(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gro_train_splits_at_the_stride_and_a_lone_datagram_stays_whole() {
        let ranges: Vec<_> = segments(100, 250, 100).collect();
        assert_eq!(ranges, vec![100..200, 200..300, 300..350]);
        assert_eq!(segments(0, 148, 148).collect::<Vec<_>>(), vec![0..148]);
        // An empty datagram is still one datagram, so it is counted as malformed.
        assert_eq!(segments(64, 0, 0).collect::<Vec<_>>(), vec![64..64]);
    }

    /// A message as (destination, its parts as (offset in `storage`, length), segment).
    type Described = (SocketAddr, Vec<(usize, usize)>, usize);

    fn described(sends: &[send::Transmit<'_>], storage: &[u8]) -> Vec<Described> {
        sends
            .iter()
            .map(|t| {
                let parts = match t.parts {
                    send::Parts::One(bytes) => vec![bytes],
                    send::Parts::Many(parts) => parts.to_vec(),
                };
                let parts = parts
                    .iter()
                    .map(|p| (p.as_ptr() as usize - storage.as_ptr() as usize, p.len()))
                    .collect();
                (t.to, parts, t.segment)
            })
            .collect()
    }

    #[test]
    fn a_run_to_one_endpoint_leaves_as_one_message_and_anything_else_alone() {
        let (x, y): (SocketAddr, SocketAddr) = (
            "192.0.2.1:1".parse().expect("x"),
            "192.0.2.2:2".parse().expect("y"),
        );
        let storage: Vec<u8> = (0..SLOT * 4).map(|i| i as u8).collect();
        let drop = Output::Drop(wpex_proto::DropReason::UnknownReceiver);
        // Slot 0: a GRO train of five 100-byte datagrams and a 40-byte tail. Slot 1: a datagram
        // to x, which cannot join a train that ended short, and one copied to x and y. Slots 2
        // and 3: datagrams that came one by one, to x.
        let outputs = vec![
            (0..100, Output::Forward(x)),
            (100..200, Output::Forward(x)),
            (200..300, Output::Forward(y)),
            (300..400, drop.clone()),
            (400..500, Output::Forward(x)),
            (500..540, Output::Forward(x)),
            (SLOT..SLOT + 100, Output::Forward(x)),
            (SLOT + 100..SLOT + 200, Output::ForwardBoth([x, y])),
            (2 * SLOT..2 * SLOT + 100, Output::Forward(x)),
            (3 * SLOT..3 * SLOT + 100, Output::Forward(x)),
            (3 * SLOT + 100..3 * SLOT + 160, Output::Forward(x)),
        ];
        let mut parts = Vec::new();
        let sends = plan_sends(&outputs, &storage, 64, &mut parts);
        assert_eq!(
            described(&sends, &storage),
            vec![
                (x, vec![(0, 200)], 100),
                (y, vec![(200, 100)], 100),
                (x, vec![(400, 140)], 100),
                (x, vec![(SLOT, 100)], 100),
                (x, vec![(SLOT + 100, 100)], 100),
                (y, vec![(SLOT + 100, 100)], 100),
                // Three datagrams from two buffers: two parts, one message.
                (x, vec![(2 * SLOT, 100), (3 * SLOT, 160)], 100),
            ]
        );
        // The cap on datagrams per message splits a run; a shorter datagram ends one.
        let mut parts = Vec::new();
        let sends = plan_sends(&outputs[8..], &storage, 2, &mut parts);
        assert_eq!(
            described(&sends, &storage),
            vec![
                (x, vec![(2 * SLOT, 100), (3 * SLOT, 100)], 100),
                (x, vec![(3 * SLOT + 100, 60)], 60),
            ]
        );
        let tail_first = [
            (0..40, Output::Forward(x)),
            (SLOT..SLOT + 100, Output::Forward(x)),
        ];
        let mut parts = Vec::new();
        assert_eq!(plan_sends(&tail_first, &storage, 64, &mut parts).len(), 2);
    }
}
