//! The yardstick: the least a relay of WireGuard indices can do, measured the same way as the
//! relay under test, so that every run says what this machine can forward at all.
//!
//! One thread and one socket. It reads batches of [`BATCH`] with `recvmmsg`, learns
//! `sender index -> source` from handshake initiations and responses, forwards responses,
//! cookie replies and transport data by receiver index, and sends each batch back out with one
//! `sendmmsg` straight from the receive buffers. No broadcast of initiations, no expiry, no
//! checks of source, size or reserved bytes, no rate limits, no metrics: everything a real relay
//! needs is left out, so "ours / forwarder" is the price of those things plus any waste.
//!
//! It runs as `wpex-bench forwarder --port N`, a child process like the relay, so its CPU time
//! and memory are read from /proc in exactly the same way.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::{BATCH, RecvBatch, Wait, send_all};
use crate::wire::{TYPE_INITIATION, TYPE_RESPONSE};

#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("forwarder: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddrV4,
        source: io::Error,
    },
    #[error("forwarder: receive keeps failing: {0}")]
    Receive(io::Error),
}

/// Receive and send buffer size, the same 4 MiB the relay asks for.
const SOCKET_BUFFER: usize = 4 << 20;
/// Room per received datagram: the largest UDP payload fits.
const SLOT: usize = 1 << 16;
/// Consecutive receive errors after which the forwarder gives up rather than spin.
const MAX_RECEIVE_ERRORS: u32 = 1000;

fn listen(addr: SocketAddrV4) -> Result<Socket, ForwarderError> {
    let fail = |source| ForwarderError::Listen { addr, source };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    // Best effort, as in the relay: the kernel caps both at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into()).map_err(fail)?;
    Ok(socket)
}

fn index_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Forwards until killed.
pub fn run(bind: Ipv4Addr, port: u16) -> Result<(), ForwarderError> {
    let socket = listen(SocketAddrV4::new(bind, port))?;
    let mut table: HashMap<u32, SocketAddrV4, foldhash::fast::RandomState> = HashMap::default();
    let mut rx = RecvBatch::new(SLOT);
    let mut out: Vec<usize> = Vec::with_capacity(BATCH);
    let mut to: Vec<SocketAddrV4> = Vec::with_capacity(BATCH);
    let mut errors = 0;
    loop {
        let n = match rx.recv(socket.as_fd(), Wait::One) {
            Ok(n) => {
                errors = 0;
                n
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                errors += 1;
                if errors >= MAX_RECEIVE_ERRORS {
                    return Err(ForwarderError::Receive(e));
                }
                continue;
            }
        };
        out.clear();
        to.clear();
        for i in 0..n {
            let (d, Some(src)) = (rx.datagram(i), rx.source(i)) else {
                continue;
            };
            let Some(&ty) = d.first() else { continue };
            let dest = match ty {
                TYPE_INITIATION => {
                    if let Some(sender) = index_at(d, 4) {
                        table.insert(sender, src);
                    }
                    None
                }
                TYPE_RESPONSE => {
                    if let Some(sender) = index_at(d, 4) {
                        table.insert(sender, src);
                    }
                    index_at(d, 8).and_then(|r| table.get(&r).copied())
                }
                _ => index_at(d, 4).and_then(|r| table.get(&r).copied()),
            };
            if let Some(dest) = dest {
                out.push(i);
                to.push(dest);
            }
        }
        // No allocation per batch: the slices point into the receive buffers.
        let mut datagrams: [&[u8]; BATCH] = [&[]; BATCH];
        for (slot, &i) in datagrams.iter_mut().zip(&out) {
            *slot = rx.datagram(i);
        }
        // A refused send loses that datagram, as the network would; nothing to report to.
        let _ = send_all(socket.as_fd(), &datagrams[..out.len()], &to);
    }
}
