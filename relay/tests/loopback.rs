//! The real server on loopback UDP, with two boringtun peers exchanging a handshake and data.

mod common;

use common::{Endpoint, Identity, Peer, ipv4_packet};
use wpex::keys::AllowedKeys;
use wpex::message::Kind;
use wpex::server::{Server, lock};
use wpex::{Access, Config};

fn run_pair(bind: &str, access: impl FnOnce(&Identity, &Identity) -> Access) {
    let (ia, ib) = (Identity::random(), Identity::random());
    let access = access(&ia, &ib);
    let challenged = matches!(access, Access::AllowList(_));
    let config = Config {
        access,
        ..Config::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let server = Server::bind(config, bind, 0, 2).expect("bind relay");
    let relay_addr = server.local_addr().expect("relay address");
    let core = server.relay();
    runtime.spawn(server.serve(std::future::pending()));

    let mut a = Endpoint::new(Peer::new(&ia, &ib, false), relay_addr);
    let mut b = Endpoint::new(Peer::new(&ib, &ia, false), relay_addr);
    // B registers (its own initiation reaches nobody), then A's initiation is relayed to B.
    // The relay has several workers, so wait until B is known before A initiates.
    b.initiate(challenged);
    wait_until_known(&core, &b);
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

/// Polls the relay's table; panics if `endpoint` is not registered within a generous bound.
fn wait_until_known(core: &wpex::server::SharedRelay, endpoint: &Endpoint) {
    let addr = endpoint.socket.local_addr().expect("peer address");
    for _ in 0..500 {
        if lock(core).table().is_known(addr) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the relay never registered {addr}");
}

#[test]
fn open_mode_over_loopback() {
    run_pair("127.0.0.1", |_, _| Access::Open);
}

#[test]
fn open_mode_over_ipv6_loopback() {
    run_pair("::1", |_, _| Access::Open);
}

#[test]
fn allow_list_mode_over_loopback() {
    run_pair("127.0.0.1", |a, b| {
        Access::AllowList(AllowedKeys::new([a.public, b.public]))
    });
}

#[test]
fn allow_list_mode_over_ipv6_loopback() {
    run_pair("::1", |a, b| {
        Access::AllowList(AllowedKeys::new([a.public, b.public]))
    });
}
