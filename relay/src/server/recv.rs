//! Blocking batched receives: one `recvmmsg` with `MSG_WAITFORONE` per wake-up. The call sleeps
//! in the kernel until the first datagram arrives, then takes whatever else is queued without
//! waiting, up to [`BATCH`] buffers: one system call where a readiness loop needs two
//! (`epoll_wait`, then the read). GRO trains come with their segment size (`UDP_GRO`), as
//! quinn-udp reports it.
//!
//! Where `recvmmsg` is missing (not Linux, or a seccomp filter), one `recvfrom` per call.

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{BATCH, SLOT};

/// Whether `recvmmsg` still works here; cleared the first time the kernel says it does not.
static BATCHED: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Room for one datagram's control messages: the GRO segment size, and whatever else a socket
/// option asks for (all of quinn-udp's would take about 120 bytes).
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 128]);

/// Where the kernel writes each datagram's source address and control messages: kept from
/// call to call, so a wake-up does not clear them (it writes lengths that say what is valid).
pub(crate) struct Buffers {
    #[cfg(target_os = "linux")]
    names: Box<[libc::sockaddr_storage; BATCH]>,
    #[cfg(target_os = "linux")]
    controls: Box<[Control; BATCH]>,
}

impl Buffers {
    pub(crate) fn new() -> Self {
        Self {
            // SAFETY: all-zero is a valid value for this plain C struct.
            #[cfg(target_os = "linux")]
            names: Box::new(unsafe { std::mem::zeroed() }),
            #[cfg(target_os = "linux")]
            controls: Box::new([Control([0; 128]); BATCH]),
        }
    }
}

/// Turns off the control messages quinn-udp's socket setup asks for but the relay never reads:
/// each datagram's timestamp, destination address and TOS byte. The kernel would otherwise
/// write them into every message it hands over. GRO, and the options that shape sends, stay.
pub(crate) fn skip_unread_control(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let off: libc::c_int = 0;
        for (level, name) in [
            (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
            (libc::IPPROTO_IP, libc::IP_PKTINFO),
            (libc::IPPROTO_IP, libc::IP_RECVTOS),
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
            (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS),
        ] {
            // SAFETY: a plain int option; a level the socket lacks (IPv6 on an IPv4 socket)
            // just fails, which is fine: then it was never on.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    level,
                    name,
                    (&raw const off).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Reads the next batch into `storage`, each buffer into its [`SLOT`], described in `meta`;
/// blocks until at least one datagram is there, or the socket's receive timeout passes
/// (`WouldBlock`).
pub(crate) fn receive(
    socket: &UdpSocket,
    buffers: &mut Buffers,
    storage: &mut [u8],
    meta: &mut [quinn_udp::RecvMeta; BATCH],
) -> io::Result<usize> {
    if BATCHED.load(Ordering::Relaxed) {
        match receive_batch(socket, buffers, storage, meta) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                BATCHED.store(false, Ordering::Relaxed);
                tracing::warn!(%e, "recvmmsg unavailable; reading one datagram per call");
            }
            received => return received,
        }
    }
    let (len, addr) = socket.recv_from(&mut storage[..SLOT])?;
    meta[0].addr = addr;
    meta[0].len = len;
    meta[0].stride = len;
    Ok(1)
}

#[cfg(target_os = "linux")]
fn receive_batch(
    socket: &UdpSocket,
    buffers: &mut Buffers,
    storage: &mut [u8],
    meta: &mut [quinn_udp::RecvMeta; BATCH],
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let Buffers { names, controls } = buffers;
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let slots = storage.chunks_mut(SLOT);
    let mut n = 0;
    for (i, slot) in slots.take(BATCH).enumerate() {
        iovs[i] = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: slot.len(),
        };
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = (&raw mut names[i]).cast();
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &raw mut iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = controls[i].0.as_mut_ptr().cast();
        hdr.msg_controllen = controls[i].0.len() as _;
        n += 1;
    }
    // SAFETY: the first `n` headers point at `names`, `iovs` (each a distinct slot of `storage`)
    // and `controls`, all of which outlive the call and have the lengths given.
    let read = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            // An int in glibc's prototype, an unsigned int in musl's.
            libc::MSG_WAITFORONE as _,
            std::ptr::null_mut(),
        )
    };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    let read = read as usize;
    for (i, m) in meta.iter_mut().enumerate().take(read) {
        let hdr = &hdrs[i].msg_hdr;
        // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes into `names[i]`.
        let addr = unsafe { socket2::SockAddr::new(names[i], hdr.msg_namelen) };
        m.addr = addr
            .as_socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        m.len = hdrs[i].msg_len as usize;
        m.stride = gro_segment(hdr).unwrap_or(m.len);
    }
    Ok(read)
}

#[cfg(not(target_os = "linux"))]
fn receive_batch(
    _socket: &UdpSocket,
    _buffers: &mut Buffers,
    _storage: &mut [u8],
    _meta: &mut [quinn_udp::RecvMeta; BATCH],
) -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The segment size of a GRO train, from the message's `UDP_GRO` control message.
#[cfg(target_os = "linux")]
fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: `hdr` is a header the kernel filled, its control buffer still alive; the CMSG_*
    // macros stay within `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let segment = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(segment).ok();
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}
