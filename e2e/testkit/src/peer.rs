//! Real WireGuard peers for tests: boringtun's `Tunn`, an implementation independent of ours,
//! driven by hand ([`Peer`]) or over a UDP socket ([`Endpoint`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey as X25519Public, StaticSecret};
use rand::rngs::OsRng;

use wpex_proto::keys::PublicKey;

/// The address peers see the relay at; it feeds boringtun's own cookie computation.
pub const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// A static key pair.
pub struct Identity {
    secret: StaticSecret,
    /// The public half, as the relay's allow-list holds it.
    pub public: PublicKey,
}

impl Identity {
    /// A fresh key pair from the OS's randomness.
    pub fn random() -> Self {
        let secret = StaticSecret::random_from_rng(OsRng);
        let public = PublicKey(X25519Public::from(&secret).to_bytes());
        Self { secret, public }
    }
}

/// One side of a WireGuard session, driven by hand: datagrams in, datagrams out.
pub struct Peer {
    /// boringtun's state machine.
    pub tunn: Tunn,
    /// This peer's own public key.
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

    /// A fresh handshake initiation (with mac2 once the peer holds a cookie).
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
/// What a peer did with one datagram.
pub struct Received {
    /// Datagrams it sends back (responses, keepalives, queued data).
    pub network: Vec<Vec<u8>>,
    /// IP packets it delivers to its tunnel.
    pub tunnel: Vec<Vec<u8>>,
    /// boringtun's error, if it refused the datagram.
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

/// A peer with its own UDP socket, talking to the relay.
pub struct Endpoint {
    /// The peer's own socket.
    pub socket: UdpSocket,
    /// The peer behind it.
    pub peer: Peer,
    /// Where every datagram goes.
    pub relay: SocketAddr,
}

impl Endpoint {
    /// A socket on the loopback address of the relay's family.
    pub fn new(peer: Peer, relay: SocketAddr) -> Self {
        let local = if relay.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let socket = UdpSocket::bind(local).expect("bind peer socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("set timeout");
        Self {
            socket,
            peer,
            relay,
        }
    }

    /// Sends one datagram to the relay.
    pub fn send(&self, datagram: &[u8]) {
        self.socket
            .send_to(datagram, self.relay)
            .expect("send to relay");
    }

    /// A datagram if one arrives within `wait`.
    pub fn try_recv(&self, wait: Duration) -> Option<Vec<u8>> {
        self.socket
            .set_read_timeout(Some(wait))
            .expect("set timeout");
        let mut buf = vec![0u8; 65536];
        let got = self.socket.recv_from(&mut buf).ok();
        self.socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("set timeout");
        got.map(|(n, _)| buf[..n].to_vec())
    }

    /// The next datagram, which must come from the relay (within 3 s).
    pub fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        let (n, from) = self
            .socket
            .recv_from(&mut buf)
            .expect("a datagram from the relay");
        assert_eq!(from, self.relay, "everything arrives via the relay");
        buf.truncate(n);
        buf
    }

    /// Sends an initiation; in allow-list mode answers the relay's cookie challenge first.
    pub fn initiate(&mut self, challenged: bool) {
        let init = self.peer.initiation();
        self.send(&init);
        if challenged {
            let reply = self.recv();
            assert_eq!(reply[0], 3, "a cookie reply from the relay");
            assert_eq!(self.peer.receive(&reply).error, None);
            let retry = self.peer.initiation();
            self.send(&retry);
        }
    }

    /// Receives one datagram, lets the peer process it and sends whatever it answers.
    pub fn answer(&mut self) -> Vec<Vec<u8>> {
        let datagram = self.recv();
        let got = self.peer.receive(&datagram);
        assert_eq!(got.error, None, "the peer accepts what the relay delivered");
        for out in &got.network {
            self.send(out);
        }
        got.tunnel
    }
}
