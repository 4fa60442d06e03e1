//! A small UDP tool run inside test namespaces: floods a relay with handshake-initiation-shaped
//! datagrams, or registers with it and counts the initiations it is sent.
//!
//! `udp-probe flood RELAY COUNT` and `udp-probe listen RELAY SECONDS` (prints the count). A
//! listener answers the first initiation it is sent with a response, as a WireGuard peer would,
//! which shows the relay that it receives at its address; it counts the initiations after that
//! one.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// An initiation as far as the relay can tell in open mode: type 1, zero reserved bytes, 148 bytes.
fn initiation(sender_index: u32) -> [u8; 148] {
    let mut m = [0u8; 148];
    m[0] = 1;
    m[4..8].copy_from_slice(&sender_index.to_le_bytes());
    m
}

/// A response answering the initiation whose sender index is `receiver`, as far as the relay can
/// tell in open mode: type 2, 92 bytes.
fn response(sender_index: u32, receiver: u32) -> [u8; 92] {
    let mut m = [0u8; 92];
    m[0] = 2;
    m[4..8].copy_from_slice(&sender_index.to_le_bytes());
    m[8..12].copy_from_slice(&receiver.to_le_bytes());
    m
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, relay, n] = args.as_slice() else {
        bail!("usage: udp-probe flood|listen RELAY COUNT|SECONDS");
    };
    let relay: SocketAddr = relay.parse().context("relay address")?;
    let n: u32 = n.parse().context("count")?;
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    // Distinct per process, so two probes never claim the same index.
    let base = std::process::id() << 12;
    match mode.as_str() {
        "flood" => {
            for i in 0..n {
                socket.send_to(&initiation(base + i + 1), relay)?;
            }
        }
        "listen" => {
            socket.send_to(&initiation(base), relay)?;
            let deadline = Instant::now() + Duration::from_secs(u64::from(n));
            let mut buf = [0u8; 2048];
            let mut count: Option<u32> = None;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                match socket.recv_from(&mut buf) {
                    Ok((len, _)) if len == 148 && buf[0] == 1 => match count.as_mut() {
                        Some(count) => *count += 1,
                        None => {
                            let initiator = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                            socket.send_to(&response(base | 0x800, initiator), relay)?;
                            count = Some(0);
                        }
                    },
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            println!("{}", count.unwrap_or(0));
        }
        other => bail!("unknown mode {other}"),
    }
    Ok(())
}
