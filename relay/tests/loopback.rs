//! The real server on loopback UDP, with two boringtun peers exchanging a handshake and data.

use std::time::Duration;

use wpex::server::Server;
use wpex::shared::{SharedRelay, lock};
use wpex_proto::keys::AllowedKeys;
use wpex_proto::message::Kind;
use wpex_proto::{Access, Config};
use wpex_testkit::eventually;
use wpex_testkit::peer::{Endpoint, Identity, Peer, ipv4_packet};

/// A relay on `bind` and two peers that completed a handshake through it.
struct Established {
    _runtime: tokio::runtime::Runtime,
    core: SharedRelay,
    a: Endpoint,
    b: Endpoint,
    challenged: bool,
}

fn establish(bind: &str, access: impl FnOnce(&Identity, &Identity) -> Access) -> Established {
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
    Established {
        _runtime: runtime,
        core,
        a,
        b,
        challenged,
    }
}

fn run_pair(bind: &str, access: impl FnOnce(&Identity, &Identity) -> Access) {
    let Established {
        core,
        mut a,
        mut b,
        challenged,
        _runtime: _relay_running,
    } = establish(bind, access);
    let ping = a.peer.send(&ipv4_packet(b"ping"));
    a.send(&ping);
    assert_eq!(b.answer(), vec![ipv4_packet(b"ping")]);
    let pong = b.peer.send(&ipv4_packet(b"pong"));
    b.send(&pong);
    assert_eq!(a.answer(), vec![ipv4_packet(b"pong")]);

    let relay = lock(&core);
    let stats = relay.stats_with_fast_path();
    assert_eq!(relay.table().session_count(), 1);
    assert_eq!(stats.forwarded(Kind::Response).packets, 1);
    assert_eq!(stats.forwarded(Kind::Data).packets, 3);
    // The keepalive confirms the session in the core; ping and pong then take the routes.
    assert_eq!(relay.routes().forwarded().data.packets, 2);
    assert_eq!(stats.cookie_replies, if challenged { 2 } else { 0 });
    assert_eq!(stats.dropped_total(), 0);
}

/// Polls the relay's table; panics if `endpoint` is not registered within a generous bound.
fn wait_until_known(core: &SharedRelay, endpoint: &Endpoint) {
    let addr = endpoint.socket.local_addr().expect("peer address");
    eventually(
        format!("the relay registers {addr}"),
        Duration::from_secs(5),
    )
    .every(Duration::from_millis(10))
    .until_blocking(|| Ok(lock(core).table().is_known(addr).then_some(())))
    .expect("registered");
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

/// A burst of same-size datagrams from one peer reaches the relay as one GRO train, and leaves
/// it as one GSO message: a receiver that asks for GRO gets the train whole, which loopback
/// only does for a message sent with GSO. Every datagram in it decrypts, in order.
#[test]
fn a_train_crosses_the_relay_as_one_gso_message() {
    const TRAIN: usize = 20;
    let Established {
        core,
        mut a,
        mut b,
        _runtime: _relay_running,
        ..
    } = establish("127.0.0.1", |_, _| Access::Open);
    // quinn-udp's socket state turns GRO on, as the relay's own sockets have it.
    let _gro = quinn_udp::UdpSocketState::new((&b.socket).into()).expect("GRO on B");
    // That also made the socket non-blocking; B must wait for the relay, under any load.
    b.socket.set_nonblocking(false).expect("B blocks again");
    let plain: Vec<Vec<u8>> = (0..TRAIN)
        .map(|i| ipv4_packet(format!("train datagram {i:02}").as_bytes()))
        .collect();
    let sealed: Vec<Vec<u8>> = plain.iter().map(|p| a.peer.send(p)).collect();
    let segment = sealed[0].len();
    assert!(sealed.iter().all(|d| d.len() == segment));
    let train = sealed.concat();
    quinn_udp::UdpSocketState::new((&a.socket).into())
        .and_then(|state| {
            state.try_send(
                (&a.socket).into(),
                &quinn_udp::Transmit {
                    destination: a.relay,
                    ecn: None,
                    contents: &train,
                    segment_size: Some(segment),
                    src_ip: None,
                },
            )
        })
        .expect("A sends the train as one GSO message");

    let whole = b.recv();
    assert_eq!(
        whole.len(),
        TRAIN * segment,
        "the relay forwarded the train as one GSO message"
    );
    let mut opened = Vec::new();
    for datagram in whole.chunks(segment) {
        let got = b.peer.receive(datagram);
        assert_eq!(got.error, None);
        opened.extend(got.tunnel);
    }
    assert_eq!(opened, plain);
    let relay = lock(&core);
    let data = relay.stats_with_fast_path().forwarded(Kind::Data).packets;
    assert_eq!(
        data,
        1 + TRAIN as u64,
        "the keepalive and every datagram of the train"
    );
    assert_eq!(
        relay.routes().forwarded().data.packets,
        TRAIN as u64,
        "the train took the routes"
    );
}
