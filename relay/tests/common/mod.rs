//! Real WireGuard endpoints for tests: boringtun's `Tunn`, an independent implementation.
#![allow(dead_code)] // each test crate uses a different part

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey as X25519Public, StaticSecret};
use rand::rngs::OsRng;

use wpex::keys::PublicKey;

/// The address peers see the relay at; it feeds boringtun's own cookie computation.
pub const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

pub struct Identity {
    secret: StaticSecret,
    pub public: PublicKey,
}

impl Identity {
    pub fn random() -> Self {
        let secret = StaticSecret::random_from_rng(OsRng);
        let public = PublicKey(X25519Public::from(&secret).to_bytes());
        Self { secret, public }
    }
}

pub struct Peer {
    pub tunn: Tunn,
    pub public: PublicKey,
}

static NEXT_INDEX: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

impl Peer {
    /// `me` configured with `them` as its only peer. `under_load` makes it demand its own cookies.
    pub fn new(me: &Identity, them: &Identity, under_load: bool) -> Self {
        let index = NEXT_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let own_public = X25519Public::from(&me.secret);
        let limiter = under_load.then(|| Arc::new(RateLimiter::new(&own_public, 0)));
        let tunn = Tunn::new(
            me.secret.clone(),
            X25519Public::from(them.public.0),
            None,
            None,
            index,
            limiter,
        );
        Self {
            tunn,
            public: me.public,
        }
    }

    pub fn initiation(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        match self.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(out) => out.to_vec(),
            other => panic!("no initiation: {}", describe(&other)),
        }
    }

    /// Feeds a datagram; returns what the peer sends back and what it delivers to its tunnel.
    pub fn receive(&mut self, datagram: &[u8]) -> Received {
        let mut got = Received::default();
        let mut buf = vec![0u8; 65536];
        let mut input = datagram.to_vec();
        loop {
            match self.tunn.decapsulate(Some(RELAY_IP), &input, &mut buf) {
                TunnResult::Done => break,
                TunnResult::Err(e) => {
                    got.error = Some(format!("{e:?}"));
                    break;
                }
                TunnResult::WriteToNetwork(out) => got.network.push(out.to_vec()),
                TunnResult::WriteToTunnelV4(out, _) | TunnResult::WriteToTunnelV6(out, _) => {
                    got.tunnel.push(out.to_vec());
                    break;
                }
            }
            // An empty datagram asks for queued packets.
            input.clear();
        }
        got
    }

    /// Encrypts an IP packet for the peer.
    pub fn send(&mut self, ip_packet: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        match self.tunn.encapsulate(ip_packet, &mut buf) {
            TunnResult::WriteToNetwork(out) => out.to_vec(),
            other => panic!("cannot encapsulate: {}", describe(&other)),
        }
    }
}

#[derive(Debug, Default)]
pub struct Received {
    pub network: Vec<Vec<u8>>,
    pub tunnel: Vec<Vec<u8>>,
    pub error: Option<String>,
}

fn describe(r: &TunnResult<'_>) -> String {
    match r {
        TunnResult::Done => "done".into(),
        TunnResult::Err(e) => format!("error {e:?}"),
        TunnResult::WriteToNetwork(_) => "network write".into(),
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => "tunnel write".into(),
    }
}

/// A minimal IPv4 packet (header + payload) that boringtun will accept from its tunnel.
pub fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[20..].copy_from_slice(payload);
    p
}
