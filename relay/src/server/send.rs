//! Batched sends: every datagram one receive batch produced leaves in as few `sendmmsg` calls as
//! possible, instead of one system call each. A run of same-size datagrams to one destination
//! (a GRO train the relay received, or datagrams that arrived one by one) leaves as one UDP GSO
//! message, which the kernel splits: one trip through the stack instead of one per datagram. The
//! datagrams of a message may lie in separate buffers: each part is one `iovec`, so nothing is
//! copied.
//!
//! Fallbacks, each for good once the kernel says so: where `sendmmsg` is missing (not Linux, or
//! a seccomp filter), one `sendto` per datagram; where a device cannot segment (EIO), no GSO. A
//! train the kernel refuses is sent again datagram by datagram, so nothing is lost either way.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use std::net::UdpSocket;

/// Messages per `sendmmsg` call; the kernel caps a call at 1024 (UIO_MAXIOV).
#[cfg(target_os = "linux")]
const CHUNK: usize = 64;

/// Parts (`iovec`s) per `sendmmsg` call, over all its messages: a call ends early rather than
/// exceed it. Above what one message may hold (a train of at most 64 datagrams, as the kernel
/// takes), so a message always fits.
#[cfg(target_os = "linux")]
const IOVS: usize = 4 * CHUNK;

/// The most a GSO message may carry: an IPv4 datagram's payload limit.
pub(crate) const GSO_MAX_BYTES: usize = 65_507;

/// Whether `sendmmsg` still works here; cleared the first time the kernel says it does not.
static BATCHED: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Whether UDP GSO still works here; cleared the first time a device cannot segment.
static GSO: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Whether trains may be built: false once a send showed that segmentation offload fails here.
pub(crate) fn gso_enabled() -> bool {
    GSO.load(Ordering::Relaxed)
}

/// Sends every datagram on its own from now on (`--no-gso`).
pub fn disable_gso() {
    GSO.store(false, Ordering::Relaxed);
}

/// One message to send: a datagram, or a train of datagrams of `segment` bytes each (the last
/// may be shorter) back to back in its parts, all for `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transmit<'a> {
    pub to: SocketAddr,
    pub parts: Parts<'a>,
    pub segment: usize,
}

/// A message's bytes: one slice, or several sent as one, in order. Every part but the last holds
/// whole datagrams of the message's `segment` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parts<'a> {
    One(&'a [u8]),
    Many(&'a [&'a [u8]]),
}

impl<'a> Parts<'a> {
    fn as_slice(&self) -> &[&'a [u8]] {
        match self {
            Parts::One(bytes) => std::slice::from_ref(bytes),
            Parts::Many(parts) => parts,
        }
    }
}

impl<'a> Transmit<'a> {
    pub(crate) fn single(to: SocketAddr, bytes: &'a [u8]) -> Self {
        Self {
            to,
            parts: Parts::One(bytes),
            segment: bytes.len(),
        }
    }

    /// Its bytes in all.
    pub(crate) fn len(&self) -> usize {
        self.parts.as_slice().iter().map(|p| p.len()).sum()
    }

    fn is_train(&self) -> bool {
        self.segment > 0 && self.len() > self.segment
    }

    /// Its bytes, if it is one datagram: what may go by plain `sendto`. A train or a message of
    /// several parts is not, whatever its length, or its datagrams would arrive glued together.
    fn as_datagram(&self) -> Option<&'a [u8]> {
        match self.parts {
            Parts::One(bytes) if !self.is_train() => Some(bytes),
            Parts::One(_) | Parts::Many(_) => None,
        }
    }

    /// The datagrams of a train, one message each.
    fn datagrams(&self) -> impl Iterator<Item = Transmit<'a>> + '_ {
        let (to, segment) = (self.to, self.segment.max(1));
        self.parts
            .as_slice()
            .iter()
            .flat_map(move |part| part.chunks(segment))
            .map(move |d| Transmit::single(to, d))
    }
}

/// Sends every message of `out` on `socket`, a blocking one: a full send buffer waits for room,
/// as the network would. A datagram the kernel refuses is passed to `failed` and skipped, as the
/// network would drop it; the others still go.
pub(crate) fn send_all(
    socket: &UdpSocket,
    out: &[Transmit<'_>],
    mut failed: impl FnMut(SocketAddr, &io::Error),
) {
    let mut split = Vec::new();
    send_run(socket, out, &mut failed, &mut split);
    // Only single datagrams are left, so this pass splits nothing further.
    send_run(socket, &split, &mut failed, &mut Vec::new());
}

/// Sends `out` in order; trains that cannot go as GSO messages are appended to `split`.
fn send_run<'a>(
    socket: &UdpSocket,
    out: &[Transmit<'a>],
    failed: &mut impl FnMut(SocketAddr, &io::Error),
    split: &mut Vec<Transmit<'a>>,
) {
    let mut next = 0;
    while next < out.len() {
        let first = out[next];
        let joined = first.as_datagram().is_none();
        if joined && !(BATCHED.load(Ordering::Relaxed) && gso_enabled()) {
            split.extend(first.datagrams());
            next += 1;
            continue;
        }
        match send_front(socket, first, &out[next..]) {
            Ok(n) => next += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if first.is_train() && gso_refused(&e) => {
                if e.raw_os_error() == Some(libc::EIO) && GSO.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%e, "UDP segmentation offload fails here; sending datagrams one by one");
                }
                split.extend(first.datagrams());
                next += 1;
            }
            Err(e) => {
                failed(first.to, &e);
                next += 1;
            }
        }
    }
}

/// One system call for the front of `rest`, whose first message is `first`: a `sendmmsg` while
/// it works, else one `sendto`. Returns how many messages went: none for a train met once
/// batching is off (another thread, or this call, may just have turned it off), which the next
/// round splits.
fn send_front(socket: &UdpSocket, first: Transmit<'_>, rest: &[Transmit<'_>]) -> io::Result<usize> {
    if BATCHED.load(Ordering::Relaxed) {
        match send_batch(socket, rest) {
            Err(e) if unsupported(&e) => {
                BATCHED.store(false, Ordering::Relaxed);
                tracing::warn!(%e, "sendmmsg unavailable; sending one datagram per call");
            }
            done => return done,
        }
    }
    let Some(bytes) = first.as_datagram() else {
        return Ok(0);
    };
    socket2::SockRef::from(socket)
        .send_to(bytes, &first.to.into())
        .map(|_| 1)
}

/// The call itself, not a datagram, is the problem. (EPERM is not: netfilter refuses single
/// datagrams with it.)
fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSYS)
}

/// How the kernel refuses a GSO message it cannot segment: EIO where the device lacks checksum
/// offload, EINVAL for a segment size or count it does not take.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL))
}

/// Room for one `UDP_SEGMENT` control message, aligned as the kernel wants.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegmentCmsg([u8; 32]);

/// Makes `hdr` a GSO message of `segment`-byte datagrams: its control message, a `UDP_SEGMENT`,
/// is written into `cmsg`, which `hdr` then points at and which must outlive the send.
#[cfg(target_os = "linux")]
fn set_segment(hdr: &mut libc::msghdr, cmsg: &mut SegmentCmsg, segment: u16) {
    // SAFETY: `cmsg` has room for CMSG_SPACE(2) bytes and is 8-aligned; the header's fields are
    // set before the first CMSG_* macro reads them.
    unsafe {
        hdr.msg_control = cmsg.0.as_mut_ptr().cast();
        hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
    }
}

/// One `sendmmsg` of up to [`CHUNK`] messages and [`IOVS`] parts from the front of `out`;
/// returns how many messages the kernel took (at least one), or the error of the first.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, out: &[Transmit<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let addrs: [socket2::SockAddr; CHUNK] =
        std::array::from_fn(|i| out.get(i).map_or(out[0].to, |t| t.to).into());
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; IOVS] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
    let mut cmsgs = [SegmentCmsg([0; 32]); CHUNK];
    // Where each message's parts start in `iovs`; pointed at once `iovs` is filled.
    let mut first_iov = [0usize; CHUNK];
    let (mut n, mut used) = (0, 0);
    for t in out.iter().take(CHUNK) {
        let parts = t.parts.as_slice();
        if used + parts.len() > IOVS {
            if n == 0 {
                // More parts than any train holds (see IOVS): refused, so it is split.
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            break;
        }
        for (iov, part) in iovs[used..].iter_mut().zip(parts) {
            *iov = libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            };
        }
        let i = n;
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addrs[i].len();
        first_iov[i] = used;
        hdr.msg_iovlen = parts.len() as _;
        used += parts.len();
        n += 1;
        if t.is_train() {
            let segment = u16::try_from(t.segment).unwrap_or(u16::MAX);
            set_segment(hdr, &mut cmsgs[i], segment);
        }
    }
    let iov_base = iovs.as_mut_ptr();
    for (hdr, first) in hdrs.iter_mut().zip(first_iov).take(n) {
        hdr.msg_hdr.msg_iov = iov_base.wrapping_add(first);
    }
    // SAFETY: the first `n` headers point at `addrs`, `iovs`, `cmsgs` and the datagrams of `out`,
    // all of which outlive the call; the kernel only reads them (and writes `msg_len`).
    let sent =
        unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

#[cfg(not(target_os = "linux"))]
fn send_batch(_socket: &UdpSocket, _out: &[Transmit<'_>]) -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive_all(socket: &std::net::UdpSocket, count: usize) -> Vec<Vec<u8>> {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        (0..count)
            .map(|i| {
                let n = socket
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
                buf[..n].to_vec()
            })
            .collect()
    }

    /// Issue 19: once `sendmmsg` fails, a GRO train held as one slice went by `sendto` whole.
    #[test]
    fn only_a_single_datagram_may_go_by_plain_sendto() {
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let train = [7u8; 300];
        let one = Transmit::single(to, &train[..100]);
        assert_eq!(one.as_datagram(), Some(&train[..100]));
        let gro_train = Transmit {
            to,
            parts: Parts::One(&train),
            segment: 100,
        };
        assert_eq!(gro_train.as_datagram(), None);
        let pieces: [&[u8]; 2] = [&train[..100], &train[100..150]];
        let many = Transmit {
            to,
            parts: Parts::Many(&pieces),
            segment: 100,
        };
        assert_eq!(many.as_datagram(), None);
        // A train's datagrams are each one.
        assert!(
            gro_train
                .datagrams()
                .all(|d| d.as_datagram() == Some(&train[..100]))
        );
    }

    #[test]
    fn a_batch_reaches_every_destination_in_order_and_a_refused_one_is_skipped() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind b");
        let (to_a, to_b) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let payloads: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        // An IPv6 destination on an IPv4 socket: the kernel refuses that one datagram.
        let refused: SocketAddr = "[::1]:9".parse().expect("addr");
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            out.push(Transmit::single(if i % 2 == 0 { to_a } else { to_b }, p));
            if i == 70 {
                out.push(Transmit::single(refused, p));
            }
        }
        let mut failures = Vec::new();
        send_all(&sender, &out, |to, e| failures.push((to, e.kind())));
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].0, refused);
        for (socket, parity) in [(&a, 0), (&b, 1)] {
            let expected: Vec<_> = (0..150).filter(|i| i % 2 == parity).collect();
            let got = receive_all(socket, expected.len());
            for (i, datagram) in expected.into_iter().zip(got) {
                assert_eq!(datagram, payloads[i], "datagram {i}");
            }
        }
    }

    /// A receiver without GRO gets a train as the datagrams it was made of, in order. A train
    /// of more segments than the kernel takes in one GSO message (64, or 128 since Linux 6.9) is refused with
    /// EINVAL and then sent datagram by datagram: the fallback path, for real.
    #[test]
    fn a_train_arrives_as_its_datagrams_and_a_refused_train_is_split() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind rx");
        let to = rx.local_addr().expect("rx addr");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let datagrams: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 120]).collect();
        let mut bytes: Vec<u8> = datagrams.concat();
        bytes.extend_from_slice(&[200; 50]);
        let (fits, too_many) = (&bytes[..8 * 120 + 50], &bytes[..]);
        let mut fits = fits.to_vec();
        fits[8 * 120..].fill(200);
        let out = [
            Transmit {
                to,
                parts: Parts::One(&fits),
                segment: 120,
            },
            Transmit {
                to,
                parts: Parts::One(too_many),
                segment: 120,
            },
        ];
        let mut failures = Vec::new();
        send_all(&sender, &out, |to, e| failures.push((to, e.kind())));
        assert!(failures.is_empty(), "{failures:?}");
        let got = receive_all(&rx, 9 + 151);
        let mut expected: Vec<Vec<u8>> = datagrams[..8].to_vec();
        expected.push(vec![200; 50]);
        expected.extend(datagrams.iter().cloned());
        expected.push(vec![200; 50]);
        assert_eq!(got, expected);
        assert!(gso_enabled(), "EINVAL for one train must not turn GSO off");
    }

    /// Datagrams from separate buffers leave as one GSO message: a receiver that asks for GRO
    /// gets them whole, which loopback only does for one message; one without GRO gets each.
    #[test]
    fn a_train_from_separate_buffers_leaves_as_one_message() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let datagrams: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100]).collect();
        let tail = vec![9u8; 30];
        let mut pieces: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        pieces.push(&tail);
        let whole: Vec<u8> = pieces.concat();

        let gro = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind gro");
        let _state = quinn_udp::UdpSocketState::new((&gro).into()).expect("GRO on");
        gro.set_nonblocking(false).expect("blocking again");
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind plain");
        for rx in [&gro, &plain] {
            let out = [Transmit {
                to: rx.local_addr().expect("rx addr"),
                parts: Parts::Many(&pieces),
                segment: 100,
            }];
            let mut failures = Vec::new();
            send_all(&sender, &out, |to, e| failures.push((to, e.kind())));
            assert!(failures.is_empty(), "{failures:?}");
        }
        assert_eq!(receive_all(&gro, 1), vec![whole]);
        let mut expected = datagrams.clone();
        expected.push(tail);
        assert_eq!(receive_all(&plain, 6), expected);
    }
}
