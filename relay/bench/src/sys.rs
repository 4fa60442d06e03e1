//! Batched UDP system calls (`sendmmsg`, `recvmmsg`) and `epoll`, as small safe wrappers.
//!
//! Why libc and not quinn-udp: the generator sends batches on connected sockets and the minimal
//! forwarder sends one batch to many destinations in one `sendmmsg`, which quinn-udp's API (one
//! destination per transmit) does not express. The wrappers are IPv4-only because everything in
//! the benchmark lives on 127.0.0.1. Each `unsafe` block says why it is sound.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Datagrams per system call, as in the issue: 32 (quinn-udp's and WireGuard-go's batch size).
pub const BATCH: usize = 32;

fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> Option<SocketAddrV4> {
    (sa.sin_family == libc::AF_INET as libc::sa_family_t).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )
    })
}

/// Sends up to [`BATCH`] datagrams in one `sendmmsg`: to `to[i]` each, or, with `to` empty, to
/// the socket's connected peer. Returns how many the kernel took; on a partial send the caller
/// calls again with the rest, which reports the error that stopped the first call.
pub fn send_batch(
    fd: BorrowedFd<'_>,
    datagrams: &[&[u8]],
    to: &[SocketAddrV4],
) -> io::Result<usize> {
    let n = datagrams.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    if !to.is_empty() && to.len() < n {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fewer destinations than datagrams",
        ));
    }
    // SAFETY: iovec, sockaddr_in and mmsghdr are plain C structs for which all-zero bytes are a
    // valid value (null pointers, zero lengths).
    let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    let mut names: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for (i, d) in datagrams[..n].iter().enumerate() {
        // The kernel only reads from a send buffer, so the *mut cast never leads to a write.
        iov[i] = libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        };
        if let Some(addr) = to.get(i) {
            names[i] = to_sockaddr(*addr);
        }
    }
    let (iov_base, names_base) = (iov.as_mut_ptr(), names.as_mut_ptr());
    for (i, h) in hdrs[..n].iter_mut().enumerate() {
        // `wrapping_add` stays within the arrays (i < n <= BATCH); no reference is made.
        h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
        h.msg_hdr.msg_iovlen = 1;
        if !to.is_empty() {
            h.msg_hdr.msg_name = names_base.wrapping_add(i).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
    }
    // SAFETY: hdrs[..n] point only at `iov` and `names`, which live on this frame for the whole
    // call, and each iovec points at a borrowed slice of the stated length. `n` <= BATCH.
    let sent = unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Sends `bytes`, datagrams of `segment` bytes back to back (the last may be shorter), as one
/// UDP GSO message on a connected socket: the kernel splits it, or hands it whole to a receiver
/// that asked for GRO, as a NIC's GRO would on a real network.
pub fn send_train(fd: BorrowedFd<'_>, bytes: &[u8], segment: u16) -> io::Result<()> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 32]);
    let mut cmsg = Cmsg([0; 32]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    // SAFETY: `cmsg` has room for CMSG_SPACE(2) bytes and is 8-aligned; the header points at it
    // before CMSG_FIRSTHDR reads it. The kernel only reads the iovec's buffer and the cmsg, both
    // alive for the call.
    let sent = unsafe {
        hdr.msg_control = cmsg.0.as_mut_ptr().cast();
        hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&raw const hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
        libc::sendmsg(fd.as_raw_fd(), &raw const hdr, 0)
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sends all of `datagrams` (any number), [`BATCH`] per call, retrying partial sends. Returns how
/// many were sent and the first error, if any: a datagram the kernel refuses is skipped and
/// counted, as the network would lose it.
pub fn send_all(
    fd: BorrowedFd<'_>,
    datagrams: &[&[u8]],
    to: &[SocketAddrV4],
) -> (usize, Option<io::Error>) {
    let (mut at, mut sent, mut first_error) = (0, 0, None);
    while at < datagrams.len() {
        let dest = if to.is_empty() { to } else { &to[at..] };
        match send_batch(fd, &datagrams[at..], dest) {
            Ok(0) => at += 1,
            Ok(k) => {
                at += k;
                sent += k;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The datagram at `at` failed; skip it and go on with the rest.
                at += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    (sent, first_error)
}

/// Room for [`BATCH`] received datagrams and their sources.
pub struct RecvBatch {
    storage: Vec<u8>,
    slot: usize,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    names: [libc::sockaddr_in; BATCH],
    count: usize,
}

/// Whether [`RecvBatch::recv`] waits for the first datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Block until at least one datagram is there (`MSG_WAITFORONE`).
    One,
    /// Return at once; nothing waiting reads as zero datagrams.
    No,
}

impl RecvBatch {
    /// `slot` bytes per datagram; longer ones are truncated and flagged.
    pub fn new(slot: usize) -> Self {
        Self {
            storage: vec![0; slot * BATCH],
            slot,
            lens: [0; BATCH],
            truncated: [false; BATCH],
            // SAFETY: all-zero is a valid sockaddr_in.
            names: unsafe { mem::zeroed() },
            count: 0,
        }
    }

    /// Reads up to [`BATCH`] datagrams in one `recvmmsg`.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, wait: Wait) -> io::Result<usize> {
        self.count = 0;
        // SAFETY: all-zero iovec and mmsghdr values are valid (null pointers, zero lengths).
        let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let base = self.storage.as_mut_ptr();
        for (i, v) in iov.iter_mut().enumerate() {
            *v = libc::iovec {
                // Within `storage`: i * slot + slot <= storage.len().
                iov_base: base.wrapping_add(i * self.slot).cast(),
                iov_len: self.slot,
            };
        }
        let (iov_base, names_base) = (iov.as_mut_ptr(), self.names.as_mut_ptr());
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = names_base.wrapping_add(i).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        let flags = match wait {
            Wait::One => libc::MSG_WAITFORONE,
            Wait::No => libc::MSG_DONTWAIT,
        };
        // SAFETY: every header points at its own iovec (on this frame) and its own sockaddr_in
        // in `self.names`; every iovec points at a disjoint `slot`-byte part of `self.storage`,
        // which nothing else borrows during the call (`&mut self`).
        let got = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let got = got as usize;
        for (i, h) in hdrs[..got].iter().enumerate() {
            self.lens[i] = (h.msg_len as usize).min(self.slot);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.count = got;
        Ok(got)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// The `i`th datagram of the last [`RecvBatch::recv`].
    pub fn datagram(&self, i: usize) -> &[u8] {
        let at = i * self.slot;
        &self.storage[at..at + self.lens[i]]
    }

    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// Where the `i`th datagram came from (`None` if not IPv4).
    pub fn source(&self, i: usize) -> Option<SocketAddrV4> {
        from_sockaddr(&self.names[i])
    }
}

/// A level-triggered epoll set of readable sockets, each named by a token.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointer arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; the kernel
        // copies it.
        let r = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &raw mut event,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits up to `timeout_ms` and appends the tokens of readable sockets to `ready`.
    pub fn wait(&self, ready: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        const EVENTS: usize = 64;
        // SAFETY: all-zero is a valid epoll_event.
        let mut events: [libc::epoll_event; EVENTS] = unsafe { mem::zeroed() };
        // SAFETY: the kernel writes at most EVENTS entries into `events`, which outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        // Copy the (possibly packed) field out by value; no reference into the struct is made.
        ready.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        b.connect(a.local_addr().expect("addr")).expect("connect");
        (a, b)
    }

    #[test]
    fn a_batch_goes_out_and_comes_back_whole() {
        let (a, b) = pair();
        let data: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let (sent, err) = send_all(b.as_fd(), &refs, &[]);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(sent, 40);
        let mut rx = RecvBatch::new(64);
        let mut got = Vec::new();
        while got.len() < 40 {
            let n = rx.recv(a.as_fd(), Wait::One).expect("recv");
            for i in 0..n {
                assert!(!rx.truncated(i));
                assert_eq!(
                    rx.source(i).map(std::net::SocketAddr::V4),
                    b.local_addr().ok()
                );
                got.push(rx.datagram(i).to_vec());
            }
        }
        assert_eq!(got, data);
        assert_eq!(rx.recv(a.as_fd(), Wait::No).expect("empty"), 0);
    }

    #[test]
    fn addressed_sends_reach_each_destination_and_long_ones_are_flagged() {
        let (a, _) = pair();
        let (c, _) = pair();
        let to = |s: &UdpSocket| match s.local_addr().expect("addr") {
            std::net::SocketAddr::V4(v4) => v4,
            std::net::SocketAddr::V6(other) => panic!("{other}"),
        };
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let long = [7u8; 100];
        let (sent, err) = send_all(sender.as_fd(), &[b"one", &long], &[to(&a), to(&c)]);
        assert_eq!((sent, err.map(|e| e.to_string())), (2, None));
        let mut rx = RecvBatch::new(16);
        assert_eq!(rx.recv(a.as_fd(), Wait::One).expect("a"), 1);
        assert_eq!(rx.datagram(0), b"one");
        assert_eq!(rx.recv(c.as_fd(), Wait::One).expect("c"), 1);
        assert!(rx.truncated(0));
        assert_eq!(rx.datagram(0).len(), 16);
    }

    #[test]
    fn epoll_names_the_readable_socket() {
        let (a, b) = pair();
        let (c, _) = pair();
        let poll = Epoll::new().expect("epoll");
        poll.add(a.as_fd(), 1).expect("add a");
        poll.add(c.as_fd(), 2).expect("add c");
        let mut ready = Vec::new();
        poll.wait(&mut ready, 0).expect("wait");
        assert!(ready.is_empty());
        b.send(b"x").expect("send");
        poll.wait(&mut ready, 1000).expect("wait");
        assert_eq!(ready, vec![1]);
    }
}
