//! Batched sends: every datagram one receive batch produced leaves in as few `sendmmsg` calls as
//! possible, instead of one system call each. Where the kernel lacks `sendmmsg` (not Linux, or a
//! seccomp filter that refuses it) the relay falls back to one `sendto` per datagram, for good.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per `sendmmsg` call; the kernel caps a call at 1024 (UIO_MAXIOV).
#[cfg(target_os = "linux")]
const CHUNK: usize = 64;

/// Whether `sendmmsg` still works here; cleared the first time the kernel says it does not.
static BATCHED: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Sends each `(datagram, destination)` of `out` on `socket`. A datagram the kernel refuses is
/// passed to `failed` and skipped, as the network would drop it; the others still go.
pub async fn send_all(
    socket: &UdpSocket,
    out: &[(&[u8], SocketAddr)],
    mut failed: impl FnMut(SocketAddr, &io::Error),
) {
    let mut next = 0;
    while next < out.len() {
        if let Err(e) = socket.writable().await {
            failed(out[next].1, &e);
            next += 1;
            continue;
        }
        let rest = &out[next..];
        let sent = socket.try_io(Interest::WRITABLE, || {
            if BATCHED.load(Ordering::Relaxed) {
                match send_batch(socket, rest) {
                    Err(e) if unsupported(&e) => {
                        BATCHED.store(false, Ordering::Relaxed);
                        tracing::warn!(%e, "sendmmsg unavailable; sending one datagram per call");
                    }
                    done => return done,
                }
            }
            let (bytes, to) = rest[0];
            socket2::SockRef::from(socket)
                .send_to(bytes, &to.into())
                .map(|_| 1)
        });
        match sent {
            Ok(n) => next += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                failed(out[next].1, &e);
                next += 1;
            }
        }
    }
}

/// The call itself, not a datagram, is the problem. (EPERM is not: netfilter refuses single
/// datagrams with it.)
fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSYS)
}

/// One `sendmmsg` of up to [`CHUNK`] datagrams from the front of `out`; returns how many the
/// kernel took (at least one), or the error of the first.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, out: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let n = out.len().min(CHUNK);
    let addrs: [socket2::SockAddr; CHUNK] = std::array::from_fn(|i| {
        out.get(i)
            .map_or_else(|| out[0].1.into(), |(_, to)| (*to).into())
    });
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; CHUNK] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        let (bytes, _) = out[i];
        iovs[i] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addrs[i].len();
        hdr.msg_iov = &mut iovs[i];
        hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers point at `addrs`, `iovs` and the datagrams of `out`, all of
    // which outlive the call; the kernel only reads them (and writes `msg_len`).
    let sent =
        unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

#[cfg(not(target_os = "linux"))]
fn send_batch(_socket: &UdpSocket, _out: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_reaches_every_destination_in_order_and_a_refused_one_is_skipped() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind b");
        let (to_a, to_b) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind sender");
        let payloads: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        // An IPv6 destination on an IPv4 socket: the kernel refuses that one datagram.
        let refused: SocketAddr = "[::1]:9".parse().expect("addr");
        let mut out: Vec<(&[u8], SocketAddr)> = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            out.push((p, if i % 2 == 0 { to_a } else { to_b }));
            if i == 70 {
                out.push((p, refused));
            }
        }
        let mut failures = Vec::new();
        send_all(&sender, &out, |to, e| failures.push((to, e.kind()))).await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].0, refused);
        let mut buf = [0u8; 512];
        for (socket, parity) in [(&a, 0), (&b, 1)] {
            for i in (0..150usize).filter(|i| i % 2 == parity) {
                let n = socket.recv(&mut buf).expect("datagram");
                assert_eq!(&buf[..n], payloads[i].as_slice(), "datagram {i}");
            }
        }
    }
}
