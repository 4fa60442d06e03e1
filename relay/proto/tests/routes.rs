//! The lock-free routes for transport data and cookie replies (`wpex_proto::Routes`): they forward what
//! the core would,
//! while the core's lock is held elsewhere; heard times are shared, so roaming works as in the
//! core and a forger still cannot join a busy peer; sessions cut or expired lose their routes at
//! once (that what they forward shows in the metrics is relay/tests/metrics.rs). That the routes
//! agree with the core on any input is checked by the fuzz scenario's twin relay
//! (tests/fuzz_corpus.rs).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wpex_proto::DropReason;
use wpex_proto::keys::AllowedKeys;
use wpex_proto::message::Kind;
use wpex_proto::timers::{ROAM_QUIET, SESSION_TTL};
use wpex_proto::{Access, Config, Output, Relay};
use wpex_proto::{Routes, Worker};
use wpex_testkit::fake::{handshake, transport};
use wpex_testkit::peer::{Identity, Peer, ipv4_packet};

const A: &str = "198.51.100.10:51820";
const A_REBOUND: &str = "198.51.100.10:60001";
const B: &str = "203.0.113.20:40001";
const FORGER: &str = "192.0.2.66:6666";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn data(receiver: u32) -> Vec<u8> {
    transport(receiver, 64)
}

fn feed(relay: &mut Relay, now: Instant, from: &str, datagram: &[u8]) -> Output {
    let out = relay.handle_input_inline(now, addr(from), &mut datagram.to_vec());
    if let Err(broken) = relay.check_invariants(now) {
        panic!("after a datagram from {from}: {broken}");
    }
    out
}

/// An open relay with one session, indices `a` (A's, the initiator's) and `b` (B's). With
/// `confirm`, A's first data has confirmed B's index, as a real initiator's keepalive does.
fn session(now: Instant, a: u32, b: u32, confirm: bool) -> Relay {
    let mut relay = Relay::new(Config::default(), now, [7; 32]);
    add_session(&mut relay, now, a, b, confirm, (A, B));
    relay
}

fn add_session(
    relay: &mut Relay,
    now: Instant,
    a: u32,
    b: u32,
    confirm: bool,
    (at_a, at_b): (&str, &str),
) {
    assert!(matches!(
        feed(relay, now, at_a, &handshake(1, a, 0)),
        Output::Broadcast(_)
    ));
    assert_eq!(
        feed(relay, now, at_b, &handshake(2, b, a)),
        Output::Forward(addr(at_a))
    );
    if confirm {
        assert_eq!(
            feed(relay, now, at_a, &data(b)),
            Output::Forward(addr(at_b))
        );
    }
}

/// How many routes take transport data (the rest carry cookie replies only).
fn data_routes(routes: &Routes) -> usize {
    routes
        .indices()
        .into_iter()
        .filter(|&i| routes.get(i).is_some_and(|r| r.from.is_some()))
        .count()
}

/// Offers one datagram to the routes, as an IO worker does before taking the core's lock.
fn route(worker: &mut Worker, now: Instant, from: &str, datagram: &[u8]) -> Option<SocketAddr> {
    worker.batch(now).forward(addr(from), datagram)
}

#[test]
fn the_initiators_index_is_routed_at_once_the_responders_once_confirmed() {
    let t0 = Instant::now();
    let mut relay = session(t0, 1, 2, false);
    let mut worker = Worker::new(relay.routes().clone());
    // B may answer on A's index straight away: nothing to confirm there.
    assert_eq!(route(&mut worker, t0, B, &data(1)), Some(addr(A)));
    // A's first data confirms B's index and teaches the relay where keys live: the core's job.
    assert_eq!(route(&mut worker, t0, A, &data(2)), None);
    assert_eq!(feed(&mut relay, t0, A, &data(2)), Output::Forward(addr(B)));
    assert!(relay.table().index(2).is_some_and(|e| e.confirmed));
    assert_eq!(route(&mut worker, t0, A, &data(2)), Some(addr(B)));
    // Transport data only from the sender's endpoint; nothing malformed.
    assert_eq!(route(&mut worker, t0, FORGER, &data(2)), None);
    assert_eq!(route(&mut worker, t0, B, &data(2)), None);
    assert_eq!(route(&mut worker, t0, A, &data(2)[..31]), None);
    // Cookie replies from any endpoint the relay knows, as in the core.
    let mut cookie_reply = vec![0u8; 64];
    cookie_reply[0] = 3;
    cookie_reply[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(route(&mut worker, t0, A, &cookie_reply), Some(addr(B)));
    assert_eq!(route(&mut worker, t0, FORGER, &cookie_reply), None);
    assert_eq!(
        feed(&mut relay, t0, FORGER, &cookie_reply),
        Output::Drop(DropReason::UnknownSource)
    );
    assert_eq!(route(&mut worker, t0, A, &cookie_reply[..63]), None);
    let forwarded = relay.routes().forwarded();
    assert_eq!(forwarded.data.packets, 2);
    assert_eq!(forwarded.cookie_replies.packets, 1);
}

#[test]
fn a_cookie_reply_to_a_half_open_initiation_takes_the_routes() {
    let t0 = Instant::now();
    let mut relay = Relay::new(Config::default(), t0, [7; 32]);
    let mut worker = Worker::new(relay.routes().clone());
    // B is known first; A's initiation is broadcast to it, and B, under load, answers with a
    // cookie reply on A's half-open index.
    feed(&mut relay, t0, B, &handshake(1, 9, 0));
    assert_eq!(
        feed(&mut relay, t0, A, &handshake(1, 1, 0)),
        Output::Broadcast(vec![addr(B)])
    );
    let mut cookie_reply = vec![0u8; 64];
    cookie_reply[0] = 3;
    cookie_reply[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(route(&mut worker, t0, B, &cookie_reply), Some(addr(A)));
    assert_eq!(route(&mut worker, t0, FORGER, &cookie_reply), None);
    // The half-open index expires, and its route with it.
    let later = t0 + Duration::from_secs(60);
    relay.handle_timeout(later);
    relay.check_invariants(later).expect("consistent");
    assert_eq!(route(&mut worker, later, B, &cookie_reply), None);
    assert_eq!(
        feed(&mut relay, later, B, &cookie_reply),
        Output::Drop(DropReason::UnknownReceiver)
    );
    let stats = relay.stats_with_fast_path();
    assert_eq!(stats.forwarded(Kind::CookieReply).packets, 1);
    assert_eq!(stats.forwarded(Kind::CookieReply).bytes, 64);
}

#[test]
fn transport_data_is_forwarded_while_another_thread_holds_the_core_lock() {
    const SESSIONS: u32 = 1000;
    let t0 = Instant::now();
    let config = Config {
        // Each new initiation would be copied to every endpoint so far.
        broadcast_rate: 1,
        source_rate: 0,
        ..Config::default()
    };
    let mut relay = Relay::new(config, t0, [7; 32]);
    add_session(&mut relay, t0, 1, 2, true, (A, B));
    let relay = Arc::new(Mutex::new(relay));
    let routes = relay.lock().expect("lock").routes().clone();
    let written = Arc::new(AtomicU32::new(0));
    let (locked_tx, locked_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let (relay, written) = (relay.clone(), written.clone());
        move || {
            let mut core = relay.lock().expect("lock");
            locked_tx.send(()).expect("main thread waits");
            // Under the lock the core writes routes (the map grows and resizes) and then holds on
            // until the other thread is done; if forwarding waited for this lock, it never is.
            for n in 0..SESSIONS {
                let (a, b) = (10 + 2 * n, 11 + 2 * n);
                let at = |side: u8| SocketAddr::from(([10, side, (n >> 8) as u8, n as u8], 1));
                core.handle_input(t0, at(1), &mut handshake(1, a, 0));
                core.handle_input(t0, at(2), &mut handshake(2, b, a));
                written.store(n + 1, Ordering::Relaxed);
            }
            let started = Instant::now();
            while done_rx.try_recv() == Err(TryRecvError::Empty) {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the forwarding thread never finished: it waited for the core's lock"
                );
                std::thread::yield_now();
            }
        }
    });
    locked_rx.recv().expect("the holder took the lock");
    let mut worker = Worker::new(routes.clone());
    let (to_b, to_a) = (data(2), data(1));
    let mut packets = 0;
    // Forwarding goes on at least until the holder has written every route, lock held throughout.
    while packets < 10_000 || written.load(Ordering::Relaxed) < SESSIONS {
        let batch = worker.batch(t0);
        assert_eq!(batch.forward(addr(A), &to_b), Some(addr(B)));
        assert_eq!(batch.forward(addr(B), &to_a), Some(addr(A)));
        packets += 2;
    }
    done_tx.send(()).expect("the holder is waiting");
    holder.join().expect("the holder saw forwarding finish");
    let core = relay.lock().expect("lock");
    core.check_invariants(t0).expect("consistent");
    assert_eq!(
        data_routes(&routes),
        2 + SESSIONS as usize,
        "one data route per new session"
    );
    assert_eq!(
        routes.len(),
        2 + 2 * SESSIONS as usize,
        "cookie replies to the unconfirmed side too"
    );
    // Plus the confirming packet, through the core.
    assert_eq!(
        core.stats_with_fast_path().forwarded(Kind::Data).packets,
        packets + 1
    );
}

/// A relay whose session's A side was last heard by the core at t0 and then only through the
/// routes, every half second until `t0 + 1.5 s`.
fn busy_through_the_routes(t0: Instant) -> (Relay, Worker) {
    let relay = session(t0, 1, 2, true);
    let mut worker = Worker::new(relay.routes().clone());
    for half_seconds in 1..=3 {
        let now = t0 + Duration::from_millis(500 * half_seconds);
        assert_eq!(route(&mut worker, now, A, &data(2)), Some(addr(B)));
    }
    (relay, worker)
}

#[test]
fn a_forger_cannot_roam_in_beside_a_peer_heard_only_through_the_routes() {
    let t0 = Instant::now();
    let (mut relay, mut worker) = busy_through_the_routes(t0);
    // Two seconds after the core last saw A, but half a second after the routes did.
    let now = t0 + Duration::from_secs(2);
    assert_eq!(
        relay.table().heard(1),
        Some(t0 + Duration::from_millis(1500))
    );
    assert_eq!(route(&mut worker, now, FORGER, &data(2)), None);
    assert_eq!(
        feed(&mut relay, now, FORGER, &data(2)),
        Output::Drop(DropReason::UnexpectedSource)
    );
    assert_eq!(relay.stats().roams, 0);
    assert_eq!(
        route(&mut worker, now, B, &data(1)),
        Some(addr(A)),
        "A gets no copy for the forger"
    );

    // The same forgery where A's traffic went unseen is taken as a roam: what stops it above is
    // the routes' heard time.
    let mut unheard = session(t0, 1, 2, true);
    assert_eq!(
        feed(&mut unheard, now, FORGER, &data(2)),
        Output::Forward(addr(B))
    );
    assert_eq!(unheard.stats().roams, 1);
}

#[test]
fn a_rebound_peer_still_roams_and_its_endpoint_takes_the_routes_back() {
    let t0 = Instant::now();
    let (mut relay, mut worker) = busy_through_the_routes(t0);
    // A's NAT rebinds; within a quiet second of its last packet the new port is not trusted.
    let soon = t0 + Duration::from_millis(1500) + ROAM_QUIET / 2;
    assert_eq!(
        feed(&mut relay, soon, A_REBOUND, &data(2)),
        Output::Drop(DropReason::UnexpectedSource)
    );
    let later = t0 + Duration::from_millis(1500) + ROAM_QUIET;
    assert_eq!(route(&mut worker, later, A_REBOUND, &data(2)), None);
    assert_eq!(
        feed(&mut relay, later, A_REBOUND, &data(2)),
        Output::Forward(addr(B))
    );
    assert_eq!(relay.stats().roams, 1);
    // Both directions of data now need the core: two copies for A, or a roam to clear. Cookie
    // replies to A's index need two copies too; B's index has no roam of its own.
    assert_eq!(data_routes(relay.routes()), 0);
    assert_eq!(relay.routes().get(1), None);
    assert!(relay.routes().get(2).is_some_and(|r| r.from.is_none()));
    assert_eq!(route(&mut worker, later, B, &data(1)), None);
    assert_eq!(
        feed(&mut relay, later, B, &data(1)),
        Output::ForwardBoth([addr(A), addr(A_REBOUND)])
    );
    assert_eq!(route(&mut worker, later, A, &data(2)), None);
    // A speaks from its endpoint again: the stand-in goes, and the routes come back.
    assert_eq!(
        feed(&mut relay, later, A, &data(2)),
        Output::Forward(addr(B))
    );
    assert_eq!(route(&mut worker, later, B, &data(1)), Some(addr(A)));
    assert_eq!(route(&mut worker, later, A, &data(2)), Some(addr(B)));
    relay.check_invariants(later).expect("consistent");
}

/// Walks a real peer at `at` through the relay's cookie challenge; returns its forwarded retry.
fn knock(relay: &mut Relay, now: Instant, at: &str, peer: &mut Peer) -> Output {
    let Output::CookieReply(_, reply) = feed(relay, now, at, &peer.initiation()) else {
        panic!("expected a cookie reply")
    };
    assert_eq!(peer.receive(&reply).error, None);
    let mut retry = peer.initiation();
    let out = relay.handle_input_inline(now, addr(at), &mut retry);
    relay.check_invariants(now).expect("consistent");
    assert!(matches!(out, Output::Broadcast(_)), "{out:?}");
    out
}

#[test]
fn revoking_a_key_withdraws_its_routes_at_once() {
    let t0 = Instant::now();
    let (ia, ib) = (Identity::random(), Identity::random());
    let config = Config {
        access: Access::AllowList(AllowedKeys::new([ia.public, ib.public])),
        ..Config::default()
    };
    let mut relay = Relay::new(config, t0, [7; 32]);
    let (mut a, mut b) = (Peer::new(&ia, &ib, false), Peer::new(&ib, &ia, false));
    // B becomes known; A's initiation, once past the challenge, reaches B.
    knock(&mut relay, t0, B, &mut Peer::new(&ib, &ia, false));
    let Output::CookieReply(_, reply) = feed(&mut relay, t0, A, &a.initiation()) else {
        panic!("A is challenged")
    };
    assert_eq!(a.receive(&reply).error, None);
    let mut init = a.initiation();
    assert_eq!(
        relay.handle_input_inline(t0, addr(A), &mut init),
        Output::Broadcast(vec![addr(B)])
    );
    let response = b.receive(&init).network.remove(0);
    assert_eq!(feed(&mut relay, t0, B, &response), Output::Forward(addr(A)));
    let keepalive = a.receive(&response).network.remove(0);
    assert_eq!(
        feed(&mut relay, t0, A, &keepalive),
        Output::Forward(addr(B))
    );
    assert_eq!(b.receive(&keepalive).error, None, "B may send data now");
    assert_eq!(data_routes(relay.routes()), 2, "both directions routed");

    let mut worker = Worker::new(relay.routes().clone());
    let from_a = a.send(&ipv4_packet(b"to B"));
    let from_b = b.send(&ipv4_packet(b"to A"));
    assert_eq!(route(&mut worker, t0, A, &from_a), Some(addr(B)));
    assert_eq!(route(&mut worker, t0, B, &from_b), Some(addr(A)));

    assert_eq!(relay.set_allowed_keys(t0, AllowedKeys::new([ia.public])), 2);
    relay.check_invariants(t0).expect("consistent");
    // Only B's own half-open initiation keeps a route, for cookie replies: its initiator's key
    // is not known until a response names it.
    assert_eq!(data_routes(relay.routes()), 0);
    assert_eq!(relay.routes().len(), 1);
    assert_eq!(route(&mut worker, t0, A, &from_a), None);
    assert_eq!(route(&mut worker, t0, B, &from_b), None);
    assert_eq!(
        feed(&mut relay, t0, A, &from_a),
        Output::Drop(DropReason::UnknownReceiver)
    );
}

#[test]
fn expiry_withdraws_routes_at_once() {
    let t0 = Instant::now();
    let mut relay = session(t0, 1, 2, true);
    // A younger session, between two other endpoints.
    let younger = t0 + Duration::from_secs(60);
    add_session(&mut relay, younger, 3, 4, true, (A_REBOUND, FORGER));
    let mut worker = Worker::new(relay.routes().clone());
    let end = t0 + SESSION_TTL;
    relay.handle_timeout(t0 + SESSION_TTL.saturating_sub(Duration::from_millis(1)));
    assert_eq!(
        route(&mut worker, end, A, &data(2)),
        Some(addr(B)),
        "alive to the last"
    );
    relay.handle_timeout(end);
    relay.check_invariants(end).expect("consistent");
    assert_eq!(route(&mut worker, end, A, &data(2)), None);
    assert_eq!(route(&mut worker, end, B, &data(1)), None);
    assert_eq!(
        relay.routes().len(),
        2,
        "the younger session keeps its routes"
    );
    assert_eq!(
        route(&mut worker, end, FORGER, &data(3)),
        Some(addr(A_REBOUND))
    );
}
