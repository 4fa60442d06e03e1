//! The real server on loopback UDP, with two boringtun peers exchanging a handshake and data.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{Identity, Peer, ipv4_packet};
use wpex::keys::AllowedKeys;
use wpex::message::Kind;
use wpex::server::{Server, lock};
use wpex::{Access, Config};

struct Endpoint {
    socket: UdpSocket,
    peer: Peer,
    relay: SocketAddr,
}

impl Endpoint {
    fn new(peer: Peer, relay: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind peer socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("set timeout");
        Self {
            socket,
            peer,
            relay,
        }
    }

    fn send(&self, datagram: &[u8]) {
        self.socket
            .send_to(datagram, self.relay)
            .expect("send to relay");
    }

    fn recv(&self) -> Vec<u8> {
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
    fn initiate(&mut self, challenged: bool) {
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
    fn answer(&mut self) -> Vec<Vec<u8>> {
        let datagram = self.recv();
        let got = self.peer.receive(&datagram);
        assert_eq!(got.error, None, "the peer accepts what the relay delivered");
        for out in &got.network {
            self.send(out);
        }
        got.tunnel
    }
}

fn run_pair(access: impl FnOnce(&Identity, &Identity) -> Access) {
    let (ia, ib) = (Identity::random(), Identity::random());
    let access = access(&ia, &ib);
    let challenged = matches!(access, Access::AllowList(_));
    let config = Config {
        access,
        ..Config::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let server = Server::bind(config, "127.0.0.1", 0, 2).expect("bind relay");
    let relay_addr = server.local_addr().expect("relay address");
    let core = server.relay();
    runtime.spawn(server.serve(std::future::pending()));

    let mut a = Endpoint::new(Peer::new(&ia, &ib, false), relay_addr);
    let mut b = Endpoint::new(Peer::new(&ib, &ia, false), relay_addr);
    // B registers (its own initiation reaches nobody), then A's initiation is relayed to B.
    b.initiate(challenged);
    a.initiate(challenged);
    assert!(
        b.answer().is_empty(),
        "B answers A's initiation with a response"
    );
    assert!(
        a.answer().is_empty(),
        "A completes the handshake with a keepalive"
    );
    assert!(b.answer().is_empty(), "B receives the keepalive");

    let ping = a.peer.send(&ipv4_packet(b"ping"));
    a.send(&ping);
    assert_eq!(b.answer(), vec![ipv4_packet(b"ping")]);
    let pong = b.peer.send(&ipv4_packet(b"pong"));
    b.send(&pong);
    assert_eq!(a.answer(), vec![ipv4_packet(b"pong")]);

    let relay = lock(&core);
    let stats = relay.stats();
    assert_eq!(relay.table().session_count(), 1);
    assert_eq!(stats.forwarded(Kind::Response).packets, 1);
    assert_eq!(stats.forwarded(Kind::Data).packets, 3);
    assert_eq!(stats.cookie_replies, if challenged { 2 } else { 0 });
    assert_eq!(stats.dropped_total(), 0);
}

#[test]
fn open_mode_over_loopback() {
    run_pair(|_, _| Access::Open);
}

#[test]
fn allow_list_mode_over_loopback() {
    run_pair(|a, b| Access::AllowList(AllowedKeys::new([a.public, b.public])));
}
