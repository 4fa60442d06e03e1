//! UDP IO around the sans-IO core: several SO_REUSEPORT sockets, one timer task.
//!
//! The core sits behind one mutex held only for the in-memory decision, never across IO. This
//! layer is deliberately thin so batched IO can replace it without touching the protocol.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::RngCore;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::relay::{Config, Output, Relay};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot resolve bind address '{addr}': {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("failed to listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("waiting for shutdown signals: {0}")]
    Signal(io::Error),
}

/// The shared core. A panic inside it would poison the lock; the table is still consistent
/// enough to keep relaying, so workers carry on rather than all dying.
pub type SharedRelay = Arc<Mutex<Relay>>;

pub fn lock(relay: &SharedRelay) -> MutexGuard<'_, Relay> {
    relay
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    socket.set_nonblocking(true)?;
    // Bursts of handshakes and data must not be dropped by a small default buffer.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Binds `workers` sockets to one address; with port 0 they all share the first one's port.
fn bind_all(candidates: &[SocketAddr], workers: usize) -> Result<Vec<UdpSocket>, ServerError> {
    let mut last_error = None;
    for &addr in candidates {
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
        return Ok(sockets);
    }
    Err(last_error.unwrap_or(ServerError::Resolve {
        addr: String::new(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address to bind"),
    }))
}

/// Logs IO errors at most once per interval, counting the rest, so a dead peer cannot flood logs.
#[derive(Debug, Default)]
pub struct IoErrors {
    count: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

const IO_WARN_EVERY: Duration = Duration::from_secs(10);

impl IoErrors {
    fn record(&self, what: &'static str, peer: Option<SocketAddr>, error: &io::Error) {
        let total = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= IO_WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(what, ?peer, %error, total, "UDP error (further ones are counted, logged at most every 10 s)");
        }
    }

    pub fn total(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

pub struct Server {
    relay: SharedRelay,
    sockets: Vec<Arc<UdpSocket>>,
    io_errors: Arc<IoErrors>,
}

impl Server {
    /// Binds the sockets. Call from within a tokio runtime: the sockets register with its reactor.
    pub fn bind(
        config: Config,
        bind: &str,
        port: u16,
        workers: usize,
    ) -> Result<Self, ServerError> {
        let sockets = bind_all(&listen_addrs(bind, port)?, workers.max(1))?;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Ok(Self {
            relay: Arc::new(Mutex::new(Relay::new(config, Instant::now(), seed))),
            sockets: sockets.into_iter().map(Arc::new).collect(),
            io_errors: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }

    pub fn relay(&self) -> SharedRelay {
        self.relay.clone()
    }

    pub fn io_errors(&self) -> Arc<IoErrors> {
        self.io_errors.clone()
    }

    /// Relays until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = tokio::task::JoinSet::new();
        for socket in &self.sockets {
            tasks.spawn(receive_loop(
                socket.clone(),
                self.relay.clone(),
                self.io_errors.clone(),
            ));
        }
        tasks.spawn(timer_loop(self.relay.clone()));
        shutdown.await;
        tasks.abort_all();
    }
}

async fn receive_loop(socket: Arc<UdpSocket>, relay: SharedRelay, errors: Arc<IoErrors>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                errors.record("receive", None, &e);
                continue;
            }
        };
        let datagram = &mut buf[..len];
        let output = lock(&relay).handle_input(Instant::now(), src, datagram);
        let (bytes, targets): (&[u8], Vec<SocketAddr>) = match &output {
            Output::Forward(to) => (datagram, vec![*to]),
            Output::Broadcast(to) => (datagram, to.clone()),
            Output::CookieReply(to, reply) => (reply, vec![*to]),
            Output::Drop(_) => continue,
        };
        for to in targets {
            if let Err(e) = socket.send_to(bytes, to).await {
                errors.record("send", Some(to), &e);
            }
        }
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

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> Result<(), ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}
