//! The sans-IO core driven by real WireGuard messages from boringtun, with an injected clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wpex_proto::DropReason;
use wpex_proto::ScanClass;
use wpex_proto::keys::AllowedKeys;
use wpex_proto::message::Kind;
use wpex_proto::timers::{COOKIE_ROTATION, HALF_OPEN_TTL, ROAM_QUIET, SESSION_TTL};
use wpex_proto::{Access, Config, Output, ROAM_CREDIT, Relay};
use wpex_testkit::peer::{Identity, Peer, ipv4_packet};

const A: &str = "198.51.100.10:51820";
const B: &str = "203.0.113.20:40001";
const C: &str = "203.0.113.30:40002";
const FORGER: &str = "192.0.2.66:6666";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn open_relay(now: Instant) -> Relay {
    Relay::new(Config::default(), now, [7; 32])
}

fn allow_relay(now: Instant, keys: &[&Identity]) -> Relay {
    let config = Config {
        access: Access::AllowList(AllowedKeys::new(keys.iter().map(|k| k.public))),
        ..Config::default()
    };
    Relay::new(config, now, [7; 32])
}

/// Feeds a datagram to the relay and returns it as rewritten, with the relay's decision.
fn feed(relay: &mut Relay, now: Instant, from: &str, datagram: &[u8]) -> (Output, Vec<u8>) {
    let mut buf = datagram.to_vec();
    let out = relay.handle_input_inline(now, addr(from), &mut buf);
    if let Err(broken) = relay.check_invariants(now) {
        panic!("after a datagram from {from}: {broken}");
    }
    (out, buf)
}

fn forwarded_to(out: &Output) -> Vec<SocketAddr> {
    match out {
        Output::Forward(to) => vec![*to],
        Output::Broadcast(to) => {
            let mut to = to.clone();
            to.sort();
            to
        }
        other => panic!("expected forwarding, got {other:?}"),
    }
}

/// Two peers that know each other, A at address A and B at address B.
struct Pair {
    a: Peer,
    b: Peer,
}

fn pair(ia: &Identity, ib: &Identity) -> Pair {
    Pair {
        a: Peer::new(ia, ib, false),
        b: Peer::new(ib, ia, false),
    }
}

/// Runs a full handshake A -> B through an open-mode or already-verified relay, then one data
/// packet each way, asserting every hop. Returns A's (initiator's) and B's first data packets.
fn handshake_and_data(relay: &mut Relay, now: Instant, p: &mut Pair) -> (Vec<u8>, Vec<u8>) {
    let init = p.a.initiation();
    let (out, init) = feed(relay, now, A, &init);
    assert!(
        forwarded_to(&out).contains(&addr(B)),
        "initiation reached B: {out:?}"
    );

    let got = p.b.receive(&init);
    assert_eq!(got.error, None, "B accepts the relayed initiation");
    let [response] = got.network.as_slice() else {
        panic!("B sends one response, got {got:?}")
    };
    let (out, response) = feed(relay, now, B, response);
    assert_eq!(out, Output::Forward(addr(A)));

    let got = p.a.receive(&response);
    assert_eq!(got.error, None, "A accepts the relayed response");
    // boringtun confirms the session with a keepalive, sent to B's index.
    let [keepalive] = got.network.as_slice() else {
        panic!("A sends one keepalive, got {got:?}")
    };
    let (out, _) = feed(relay, now, A, keepalive);
    assert_eq!(out, Output::Forward(addr(B)));
    assert_eq!(p.b.receive(keepalive).error, None);

    let from_a = p.a.send(&ipv4_packet(b"hello from A"));
    let (out, _) = feed(relay, now, A, &from_a);
    assert_eq!(out, Output::Forward(addr(B)));
    assert_eq!(
        p.b.receive(&from_a).tunnel,
        vec![ipv4_packet(b"hello from A")]
    );

    let from_b = p.b.send(&ipv4_packet(b"hello from B"));
    let (out, _) = feed(relay, now, B, &from_b);
    assert_eq!(out, Output::Forward(addr(A)));
    assert_eq!(
        p.a.receive(&from_b).tunnel,
        vec![ipv4_packet(b"hello from B")]
    );
    (from_a, from_b)
}

/// Makes `addr` a known endpoint of an open relay by letting it send an initiation.
fn register(relay: &mut Relay, now: Instant, at: &str, peer: &mut Peer) {
    let init = peer.initiation();
    let (out, _) = feed(relay, now, at, &init);
    assert!(matches!(out, Output::Broadcast(_)), "{out:?}");
}

#[test]
fn open_mode_relays_a_real_handshake_and_data_both_ways() {
    let t0 = Instant::now();
    let mut relay = open_relay(t0);
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut p = pair(&ia, &ib);
    // B is known to the relay only once it has sent something.
    register(&mut relay, t0, B, &mut p.b);
    handshake_and_data(&mut relay, t0, &mut p);

    assert_eq!(relay.table().session_count(), 1);
    let stats = relay.stats();
    assert_eq!(
        stats.forwarded(Kind::Initiation).packets,
        1,
        "B's lone initiation had no one to reach"
    );
    assert_eq!(stats.forwarded(Kind::Response).packets, 1);
    assert_eq!(stats.forwarded(Kind::Data).packets, 3);
    assert_eq!(stats.dropped_total(), 0);
}

/// Open mode: an initiation goes to every other known endpoint that has shown it receives, and
/// to one that has not only once per initiation it sent (issue 19: a spoofed registration
/// reflects one copy, not every initiation for a minute).
#[test]
fn initiations_are_broadcast_to_every_other_known_endpoint() {
    let t0 = Instant::now();
    let mut relay = open_relay(t0);
    let (ia, ib, ic) = (Identity::random(), Identity::random(), Identity::random());
    let mut b = Peer::new(&ib, &ia, false);
    register(&mut relay, t0, B, &mut b);
    register(&mut relay, t0, C, &mut Peer::new(&ic, &ia, false));
    // C's registration took B's one copy.
    let mut a = Peer::new(&ia, &ib, false);
    let (out, _) = feed(&mut relay, t0, A, &a.initiation());
    assert_eq!(forwarded_to(&out), vec![addr(C)]);
    assert_eq!(relay.stats().withheld, 1);
    // B's retry earns it one more; it reaches A, whose initiation earned it one (C's went).
    let (out, _) = feed(&mut relay, t0, B, &b.initiation());
    assert_eq!(forwarded_to(&out), vec![addr(A)]);
    let (out, init) = feed(&mut relay, t0, A, &a.initiation());
    assert_eq!(forwarded_to(&out), vec![addr(B)]);
    // B answers: it has shown it receives, and gets every copy from now on.
    let response = b.receive(&init).network.remove(0);
    assert_eq!(
        feed(&mut relay, t0, B, &response).0,
        Output::Forward(addr(A))
    );
    for _ in 0..3 {
        let (out, _) = feed(&mut relay, t0, C, &Peer::new(&ic, &ia, false).initiation());
        assert!(forwarded_to(&out).contains(&addr(B)), "{out:?}");
    }
}

#[test]
fn allow_list_checks_mac1_on_initiations_and_responses() {
    let t0 = Instant::now();
    let (ia, ib, ic) = (Identity::random(), Identity::random(), Identity::random());
    let mut relay = allow_relay(t0, &[&ia, &ib]);

    // C -> D where D is not allowed: the initiation's mac1 names no allowed key.
    let id = Identity::random();
    let (out, _) = feed(&mut relay, t0, C, &Peer::new(&ic, &id, false).initiation());
    assert_eq!(out, Output::Drop(DropReason::Mac1Invalid));

    // A -> C: C is not allowed either.
    let (out, _) = feed(&mut relay, t0, A, &Peer::new(&ia, &ic, false).initiation());
    assert_eq!(out, Output::Drop(DropReason::Mac1Invalid));
    assert_eq!(
        relay.table().index_count(),
        0,
        "dropped before touching the table"
    );
    assert_eq!(relay.table().endpoint_count(), 0);

    // A -> B: addressed to an allowed key, so the relay challenges A's address.
    let (out, _) = feed(&mut relay, t0, A, &Peer::new(&ia, &ib, false).initiation());
    assert!(
        matches!(out, Output::CookieReply(to, _) if to == addr(A)),
        "{out:?}"
    );

    // C -> A is addressed to an allowed key, but A's response is keyed to C, who is not allowed.
    let mut c_to_a = Peer::new(&ic, &ia, false);
    let mut a_to_c = Peer::new(&ia, &ic, false);
    let init = c_to_a.initiation();
    let got = a_to_c.receive(&init);
    let [response] = got.network.as_slice() else {
        panic!("A answers C directly: {got:?}")
    };
    // A response to no waiting index is dropped before any MAC is spent on it.
    let (out, _) = feed(&mut relay, t0, A, response);
    assert_eq!(out, Output::Drop(DropReason::UnknownReceiver));
    // With C's initiation waiting, mac1 decides: A's response names C, who is not allowed.
    let (_, init) = pass_cookie_challenge(&mut relay, t0, C, &mut c_to_a);
    let got = a_to_c.receive(&init);
    let [response] = got.network.as_slice() else {
        panic!("A answers C through the relay: {got:?}")
    };
    let (out, _) = feed(&mut relay, t0, B, response);
    assert_eq!(out, Output::Drop(DropReason::Mac1Invalid));
    assert_eq!(relay.stats().dropped(DropReason::Mac1Invalid), 3);
}

/// Walks a peer through the relay's cookie challenge; returns the retried initiation as forwarded.
fn pass_cookie_challenge(
    relay: &mut Relay,
    now: Instant,
    at: &str,
    peer: &mut Peer,
) -> (Output, Vec<u8>) {
    let (out, _) = feed(relay, now, at, &peer.initiation());
    let Output::CookieReply(to, reply) = out else {
        panic!("expected a cookie reply, got {out:?}")
    };
    assert_eq!(to, addr(at));
    let got = peer.receive(&reply);
    assert_eq!(
        got.error, None,
        "the real implementation accepts the relay's cookie reply"
    );
    assert!(got.network.is_empty() && got.tunnel.is_empty());

    let retry = peer.initiation();
    assert_ne!(
        &retry[132..148],
        &[0u8; 16],
        "the retry carries a mac2 from the relay's cookie"
    );
    let (out, forwarded) = feed(relay, now, at, &retry);
    assert!(
        matches!(out, Output::Broadcast(_) | Output::Forward(_)),
        "{out:?}"
    );
    assert_eq!(
        &forwarded[132..148],
        &[0u8; 16],
        "mac2 stripped before forwarding"
    );
    assert_eq!(&forwarded[..132], &retry[..132], "nothing else changed");
    (out, forwarded)
}

#[test]
fn cookie_challenge_is_accepted_by_a_real_peer_and_its_mac2_verified_and_stripped() {
    let t0 = Instant::now();
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut relay = allow_relay(t0, &[&ia, &ib]);
    let mut p = pair(&ia, &ib);

    // B registers first (cookie round), so A's initiation has someone to reach.
    let (out, _) = pass_cookie_challenge(&mut relay, t0, B, &mut p.b);
    assert_eq!(out, Output::Broadcast(vec![]));
    let (out, forwarded) = pass_cookie_challenge(&mut relay, t0, A, &mut p.a);
    assert_eq!(out, Output::Broadcast(vec![addr(B)]));
    assert_eq!(relay.stats().cookie_replies, 2);

    // B accepts the stripped initiation and answers through the relay.
    let got = p.b.receive(&forwarded);
    assert_eq!(got.error, None);
    // B still holds the relay's cookie from its own challenge, so its response carries mac2.
    assert_ne!(&got.network[0][76..92], &[0u8; 16]);
    let (out, response) = feed(&mut relay, t0, B, &got.network[0]);
    assert_eq!(out, Output::Forward(addr(A)));
    assert_eq!(
        &response[76..92],
        &[0u8; 16],
        "mac2 stripped from the response"
    );
    assert_eq!(&response[..76], &got.network[0][..76]);
    let got = p.a.receive(&response);
    assert_eq!(got.error, None);
    let (out, _) = feed(&mut relay, t0, A, &got.network[0]);
    assert_eq!(out, Output::Forward(addr(B)));
}

#[test]
fn a_response_from_an_unknown_address_is_challenged_and_its_retry_stripped() {
    let t0 = Instant::now();
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut relay = allow_relay(t0, &[&ia, &ib]);
    let mut p = pair(&ia, &ib);
    let (_, first) = pass_cookie_challenge(&mut relay, t0, A, &mut p.a);

    // B answers from an address the relay never verified (it got the initiation out of band).
    let got = p.b.receive(&first);
    let (out, _) = feed(&mut relay, t0, B, &got.network[0]);
    let Output::CookieReply(to, reply) = out else {
        panic!("expected a challenge, got {out:?}")
    };
    assert_eq!(to, addr(B));
    assert_eq!(
        p.b.receive(&reply).error,
        None,
        "B accepts the cookie for its response"
    );
    assert!(
        !relay.table().is_known(addr(B)),
        "an unverified responder is not registered"
    );

    // A retries; B's next response carries the relay's mac2, which is verified and stripped.
    let retry = p.a.initiation();
    let (out, retry) = feed(&mut relay, t0, A, &retry);
    assert_eq!(out, Output::Broadcast(vec![]), "A is known; no one else is");
    let got = p.b.receive(&retry);
    let response = &got.network[0];
    assert_ne!(&response[76..92], &[0u8; 16]);
    let (out, stripped) = feed(&mut relay, t0, B, response);
    assert_eq!(out, Output::Forward(addr(A)));
    assert_eq!(&stripped[76..92], &[0u8; 16]);
    assert_eq!(
        p.a.receive(&stripped).error,
        None,
        "A accepts the stripped response"
    );
}

#[test]
fn a_mac2_from_the_real_peers_own_cookie_passes_untouched() {
    let t0 = Instant::now();
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut relay = allow_relay(t0, &[&ia, &ib]);
    let mut a = Peer::new(&ia, &ib, false);
    let mut b = Peer::new(&ib, &ia, true); // B is under load and demands its own cookie
    pass_cookie_challenge(&mut relay, t0, B, &mut Peer::new(&ib, &ia, false));
    let (_, forwarded) = pass_cookie_challenge(&mut relay, t0, A, &mut a);

    let got = b.receive(&forwarded);
    let [cookie_reply] = got.network.as_slice() else {
        panic!("B under load answers with a cookie reply: {got:?}")
    };
    let (out, _) = feed(&mut relay, t0, B, cookie_reply);
    assert_eq!(out, Output::Forward(addr(A)));
    assert_eq!(a.receive(cookie_reply).error, None);

    // A's next initiation carries B's cookie in mac2; the relay must not strip it.
    let init = a.initiation();
    let (_, forwarded) = feed(&mut relay, t0, A, &init);
    assert_eq!(forwarded, init, "B's own mac2 is forwarded as is");
    let got = b.receive(&forwarded);
    assert_eq!(got.error, None);
    assert_eq!(
        got.network[0][0], 2,
        "B under load now answers with a response"
    );
}

#[test]
fn indices_expire_on_the_wpex_timers() {
    let t0 = Instant::now();
    let mut relay = open_relay(t0);
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut p = pair(&ia, &ib);
    register(&mut relay, t0, B, &mut p.b);

    // A response that arrives after the half-open index expired finds nobody.
    let (_, init) = feed(&mut relay, t0, A, &p.a.initiation());
    let response = p.b.receive(&init).network.remove(0);
    relay.handle_timeout(t0 + HALF_OPEN_TTL);
    let (out, _) = feed(&mut relay, t0 + HALF_OPEN_TTL, B, &response);
    assert_eq!(out, Output::Drop(DropReason::UnknownReceiver));

    // A session lives 180 s from the response, not refreshed by traffic.
    let t1 = t0 + Duration::from_secs(10);
    // B retries, as WireGuard does: its first copy was spent on A's lost initiation.
    register(&mut relay, t1, B, &mut p.b);
    let (from_a, _) = handshake_and_data(&mut relay, t1, &mut p);
    let almost = t1 + SESSION_TTL.saturating_sub(Duration::from_millis(1));
    relay.handle_timeout(almost);
    assert_eq!(
        feed(&mut relay, almost, A, &from_a).0,
        Output::Forward(addr(B))
    );
    relay.handle_timeout(t1 + SESSION_TTL);
    assert_eq!(relay.table().session_count(), 0);
    assert_eq!(
        feed(&mut relay, t1 + SESSION_TTL, A, &from_a).0,
        Output::Drop(DropReason::UnknownReceiver)
    );
    assert!(relay.poll_timeout() > t1 + SESSION_TTL);
}

#[test]
fn a_forged_transport_packet_cannot_move_a_session() {
    let t0 = Instant::now();
    let mut relay = open_relay(t0);
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut p = pair(&ia, &ib);
    register(&mut relay, t0, B, &mut p.b);
    let (from_a, from_b) = handshake_and_data(&mut relay, t0, &mut p);

    // The forger replays B's packet (receiver index visible in clear) from its own address.
    let (out, _) = feed(&mut relay, t0, FORGER, &from_b);
    assert_eq!(out, Output::Drop(DropReason::UnexpectedSource));
    // Traffic to B still goes to B, not to the forger.
    let again = p.a.send(&ipv4_packet(b"still yours"));
    assert_eq!(feed(&mut relay, t0, A, &again).0, Output::Forward(addr(B)));
    assert_eq!(
        feed(&mut relay, t0, FORGER, &from_a).0,
        Output::Drop(DropReason::UnexpectedSource)
    );
}

#[test]
fn a_live_index_cannot_be_taken_over_by_another_initiation() {
    let t0 = Instant::now();
    let mut relay = open_relay(t0);
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut p = pair(&ia, &ib);
    register(&mut relay, t0, B, &mut p.b);
    let init = p.a.initiation();
    feed(&mut relay, t0, A, &init);
    let (out, _) = feed(&mut relay, t0, FORGER, &init);
    assert_eq!(out, Output::Drop(DropReason::IndexInUse));
    let index = u32::from_le_bytes(init[4..8].try_into().expect("4 bytes"));
    assert_eq!(
        relay.table().index(index).map(|e| e.endpoint),
        Some(addr(A))
    );
}

#[test]
fn a_response_for_an_unknown_index_registers_nothing() {
    let t0 = Instant::now();
    let mut relay = open_relay(t0);
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut b_direct = Peer::new(&ib, &ia, false);
    let response = b_direct
        .receive(&Peer::new(&ia, &ib, false).initiation())
        .network
        .remove(0);
    let (out, _) = feed(&mut relay, t0, B, &response);
    assert_eq!(out, Output::Drop(DropReason::UnknownReceiver));
    assert_eq!(relay.table().endpoint_count(), 0);
    assert_eq!(relay.table().index_count(), 0);
}

#[test]
fn broadcast_rate_limits_copies_with_a_burst_of_five_times_the_rate() {
    let t0 = Instant::now();
    let config = Config {
        broadcast_rate: 1,
        source_rate: 0,
        ..Config::default()
    };
    let mut relay = Relay::new(config, t0, [1; 32]);
    let target = Identity::random();
    // Eight endpoints register; each registration broadcast also spends tokens.
    let mut sent = 0;
    for port in 0..8u16 {
        let at = format!("198.51.100.{}:{}", port + 1, 1000 + port);
        let (out, _) = feed(
            &mut relay,
            t0,
            &at,
            &Peer::new(&Identity::random(), &target, false).initiation(),
        );
        sent += forwarded_to(&out).len();
    }
    // Each registration wants one copy, to the last endpoint with credit (the others spent
    // theirs, sent or limited): 7 were wanted, only the burst of 5 went out.
    assert_eq!(sent, 5);
    assert_eq!(relay.stats().broadcast_limited, 2);
    // One second later one more token is there.
    let t1 = t0 + Duration::from_secs(1);
    let (out, _) = feed(
        &mut relay,
        t1,
        A,
        &Peer::new(&Identity::random(), &target, false).initiation(),
    );
    assert_eq!(forwarded_to(&out).len(), 1);
}

#[test]
fn one_source_cannot_flood_initiations() {
    let t0 = Instant::now();
    let config = Config {
        source_rate: 2,
        ..Config::default()
    };
    let mut relay = Relay::new(config, t0, [1; 32]);
    let mut peer = Peer::new(&Identity::random(), &Identity::random(), false);
    let outcomes: Vec<Output> = (0..20)
        .map(|_| feed(&mut relay, t0, A, &peer.initiation()).0)
        .collect();
    let limited = outcomes
        .iter()
        .filter(|o| **o == Output::Drop(DropReason::SourceRateLimited))
        .count();
    assert_eq!(limited, 10, "burst of 5 x 2 passes");
    // Another source is not affected.
    let (out, _) = feed(&mut relay, t0, B, &peer.initiation());
    assert!(matches!(out, Output::Broadcast(_)));
}

#[test]
fn the_table_is_bounded() {
    let t0 = Instant::now();
    let config = Config {
        max_indices: 3,
        source_rate: 0,
        ..Config::default()
    };
    let mut relay = Relay::new(config, t0, [1; 32]);
    let mut peer = Peer::new(&Identity::random(), &Identity::random(), false);
    for _ in 0..3 {
        assert!(matches!(
            feed(&mut relay, t0, A, &peer.initiation()).0,
            Output::Broadcast(_)
        ));
    }
    assert_eq!(
        feed(&mut relay, t0, A, &peer.initiation()).0,
        Output::Drop(DropReason::TableFull)
    );
    relay.handle_timeout(t0 + HALF_OPEN_TTL);
    assert!(matches!(
        feed(&mut relay, t0 + HALF_OPEN_TTL, A, &peer.initiation()).0,
        Output::Broadcast(_)
    ));
}

#[test]
fn cookies_expire_after_two_rotations() {
    let t0 = Instant::now();
    let (ia, ib) = (Identity::random(), Identity::random());
    // Relays built from the same seed start with the same cookie secret.
    let mut relays: Vec<Relay> = (0..3).map(|_| allow_relay(t0, &[&ia, &ib])).collect();
    let mut a = Peer::new(&ia, &ib, false);
    let Output::CookieReply(_, reply) = feed(&mut relays[0], t0, A, &a.initiation()).0 else {
        panic!("expected a challenge")
    };
    assert_eq!(a.receive(&reply).error, None);
    let with_cookie = a.initiation();
    assert!(matches!(
        feed(&mut relays[0], t0, A, &with_cookie).0,
        Output::Broadcast(_)
    ));

    // Each relay challenged A itself: only a source the relay challenged can hold its cookie.
    for relay in &mut relays[1..] {
        let out = feed(relay, t0, A, &Peer::new(&ia, &ib, false).initiation()).0;
        assert!(matches!(out, Output::CookieReply(..)), "{out:?}");
    }
    let once = t0 + COOKIE_ROTATION;
    relays[1].handle_timeout(once);
    let (out, _) = feed(&mut relays[1], once, A, &with_cookie);
    assert!(
        matches!(out, Output::Broadcast(_)),
        "the previous secret is still accepted: {out:?}"
    );

    let twice = t0 + COOKIE_ROTATION * 2;
    relays[2].handle_timeout(once);
    relays[2].handle_timeout(twice);
    let (out, _) = feed(&mut relays[2], twice, A, &with_cookie);
    assert!(
        matches!(out, Output::CookieReply(..)),
        "two rotations later: {out:?}"
    );
}

#[test]
fn allow_list_learns_where_keys_live_and_stops_broadcasting_to_them() {
    let t0 = Instant::now();
    let (ia, ib, ic) = (Identity::random(), Identity::random(), Identity::random());
    let mut relay = allow_relay(t0, &[&ia, &ib, &ic]);
    pass_cookie_challenge(&mut relay, t0, B, &mut Peer::new(&ib, &ia, false));
    pass_cookie_challenge(&mut relay, t0, C, &mut Peer::new(&ic, &ia, false));
    let (out, _) = pass_cookie_challenge(&mut relay, t0, A, &mut Peer::new(&ia, &ib, false));
    assert_eq!(
        forwarded_to(&out),
        vec![addr(B), addr(C)],
        "B's home is unknown: broadcast"
    );

    // A handshake completes; A's keepalive to B's index proves both homes.
    let mut q = pair(&ia, &ib);
    let (out, init) = feed(&mut relay, t0, A, &q.a.initiation());
    assert_eq!(forwarded_to(&out), vec![addr(B), addr(C)]);
    let response = q.b.receive(&init).network.remove(0);
    let (_, response) = feed(&mut relay, t0, B, &response);
    let keepalive = q.a.receive(&response).network.remove(0);
    assert_eq!(
        feed(&mut relay, t0, A, &keepalive).0,
        Output::Forward(addr(B))
    );

    // Now A's next initiation goes to B alone...
    let (out, init) = feed(&mut relay, t0, A, &q.a.initiation());
    assert_eq!(out, Output::Forward(addr(B)));
    assert_eq!(q.b.receive(&init).error, None);
    // ...and C's initiation for A goes to A alone: A's key was proven by the same session.
    let (out, _) = feed(&mut relay, t0, C, &Peer::new(&ic, &ia, false).initiation());
    assert_eq!(out, Output::Forward(addr(A)));

    // If B stops answering, the unicast goes unanswered and the relay broadcasts again.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        feed(&mut relay, t1, A, &q.a.initiation()).0,
        Output::Forward(addr(B))
    );
    relay.handle_timeout(t1 + HALF_OPEN_TTL);
    let (out, _) = feed(&mut relay, t1 + HALF_OPEN_TTL, A, &q.a.initiation());
    assert_eq!(forwarded_to(&out), vec![addr(B), addr(C)]);
}

#[test]
fn removing_a_key_cuts_its_sessions_and_keeps_the_others() {
    let t0 = Instant::now();
    let (ia, ib, ic) = (Identity::random(), Identity::random(), Identity::random());
    let mut relay = open_relay(t0);
    relay.set_allowed_keys(t0, AllowedKeys::new([ia.public, ib.public, ic.public]));
    let mut ab = pair(&ia, &ib);
    let mut p_c = Peer::new(&ic, &ia, false);
    let mut p_ac = Peer::new(&ia, &ic, false);
    // Verify all three addresses, then complete A<->B and C<->A.
    pass_cookie_challenge(&mut relay, t0, B, &mut Peer::new(&ib, &ia, false));
    pass_cookie_challenge(&mut relay, t0, A, &mut Peer::new(&ia, &ib, false));
    pass_cookie_challenge(&mut relay, t0, C, &mut Peer::new(&ic, &ia, false));
    let (ab_data, _) = handshake_and_data(&mut relay, t0, &mut ab);

    let (_, init) = feed(&mut relay, t0, C, &p_c.initiation());
    let resp = p_ac.receive(&init).network.remove(0);
    assert_eq!(feed(&mut relay, t0, A, &resp).0, Output::Forward(addr(C)));
    let keepalive = p_c.receive(&resp).network.remove(0);
    assert_eq!(
        feed(&mut relay, t0, C, &keepalive).0,
        Output::Forward(addr(A))
    );
    assert_eq!(relay.table().session_count(), 2);

    let cut = relay.set_allowed_keys(t0, AllowedKeys::new([ia.public, ib.public]));
    assert_eq!(cut, 2, "both indices of the C<->A session");
    assert_eq!(
        feed(&mut relay, t0, C, &p_c.send(&ipv4_packet(b"x"))).0,
        Output::Drop(DropReason::UnknownReceiver)
    );
    assert_eq!(
        feed(&mut relay, t0, A, &ab_data).0,
        Output::Forward(addr(B)),
        "A<->B untouched"
    );
    // C may still knock (its initiation names A, who is allowed) but A's answer, keyed to C, is
    // dropped: no new session with C can form.
    let (_, init) = feed(&mut relay, t0, C, &p_c.initiation());
    let resp = p_ac.receive(&init).network.remove(0);
    assert_eq!(
        feed(&mut relay, t0, A, &resp).0,
        Output::Drop(DropReason::Mac1Invalid)
    );
}

#[test]
fn malformed_input_of_every_kind_is_dropped_and_counted_without_panic() {
    let t0 = Instant::now();
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut relays = [open_relay(t0), allow_relay(t0, &[&ia, &ib])];
    let mut rng = StdRng::seed_from_u64(42);
    let real = [
        Peer::new(&ia, &ib, false).initiation(),
        Peer::new(&ib, &ia, false)
            .receive(&Peer::new(&ia, &ib, false).initiation())
            .network
            .remove(0),
    ];
    for relay in &mut relays {
        let mut datagrams: Vec<Vec<u8>> = Vec::new();
        for len in 0..=200usize {
            for ty in 0..=5u8 {
                let mut d: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                if let Some(first) = d.first_mut() {
                    *first = ty;
                }
                // Mostly well-formed headers, so the length checks are reached too.
                if len >= 4 && rng.gen_bool(0.8) {
                    d[1..4].fill(0);
                }
                datagrams.push(d);
            }
        }
        // Truncated, extended and bit-flipped real handshakes.
        for msg in &real {
            for cut in 0..msg.len() {
                datagrams.push(msg[..cut].to_vec());
            }
            let mut longer = msg.clone();
            longer.push(0);
            datagrams.push(longer);
            for bit in 0..msg.len() * 8 {
                let mut flipped = msg.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                datagrams.push(flipped);
            }
        }
        let mut src_port = 1u16;
        let mut drops = 0;
        for mut d in datagrams {
            src_port = src_port.wrapping_add(1);
            let from = SocketAddr::from(([192, 0, 2, 99], src_port));
            let expected = malformed(&d);
            let out = relay.handle_input_inline(t0, from, &mut d);
            if let Some(reason) = expected {
                assert_eq!(out, Output::Drop(reason), "{d:?}");
            }
            drops += u64::from(matches!(out, Output::Drop(_)));
        }
        assert_eq!(
            relay.stats().dropped_total(),
            drops,
            "every drop is counted"
        );
        let s = relay.stats();
        for reason in [
            DropReason::TooShort,
            DropReason::UnknownType,
            DropReason::BadLength,
            DropReason::Reserved,
        ] {
            assert!(s.dropped(reason) > 0, "{} counted", reason.as_str());
        }
    }
    assert!(relays[1].stats().dropped(DropReason::Mac1Invalid) > 0);
}

/// An oracle written from PROTOCOL.md, independent of the parser: why `d` is not WireGuard.
fn malformed(d: &[u8]) -> Option<DropReason> {
    if d.len() < 4 {
        return Some(DropReason::TooShort);
    }
    if d[1..4] != [0, 0, 0] {
        return Some(DropReason::Reserved);
    }
    let size_ok = match d[0] {
        1 => d.len() == 148,
        2 => d.len() == 92,
        3 => d.len() == 64,
        4 => d.len() >= 32,
        _ => return Some(DropReason::UnknownType),
    };
    (!size_ok).then_some(DropReason::BadLength)
}

/// An allow-list relay with `extra` random keys besides the given identities.
fn allow_relay_with(now: Instant, keys: &[&Identity], extra: usize) -> Relay {
    let mut rng = StdRng::seed_from_u64(8);
    let random = (0..extra).map(|_| wpex_proto::keys::PublicKey(rng.r#gen()));
    let config = Config {
        access: Access::AllowList(AllowedKeys::new(
            keys.iter().map(|k| k.public).chain(random),
        )),
        ..Config::default()
    };
    Relay::new(config, now, [7; 32])
}

fn mac1_computations(relay: &Relay) -> u64 {
    relay.stats().mac1_computations
}

fn scans(relay: &Relay) -> u64 {
    ScanClass::ALL.iter().map(|c| relay.stats().scans(*c)).sum()
}

/// A handshake A -> B and A's first data through an allow-list relay that already knows both
/// endpoints; returns the mac1 computations it took.
fn rekey(relay: &mut Relay, now: Instant, p: &mut Pair) -> u64 {
    let before = mac1_computations(relay);
    let scans_before = scans(relay);
    let (out, init) = feed(relay, now, A, &p.a.initiation());
    assert_eq!(forwarded_to(&out), vec![addr(B)], "{out:?}");
    let response = p.b.receive(&init).network.remove(0);
    let (out, response) = feed(relay, now, B, &response);
    assert_eq!(out, Output::Forward(addr(A)));
    let keepalive = p.a.receive(&response).network.remove(0);
    assert_eq!(feed(relay, now, A, &keepalive).0, Output::Forward(addr(B)));
    assert_eq!(scans(relay), scans_before, "no full scan for a known pair");
    mac1_computations(relay) - before
}

#[test]
fn a_known_pair_rekeys_with_a_handful_of_macs_among_ten_thousand_keys() {
    let t0 = Instant::now();
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut relay = allow_relay_with(t0, &[&ia, &ib], 10_000);
    // First contact: each side is scanned once and challenged, then the pair completes.
    pass_cookie_challenge(&mut relay, t0, B, &mut Peer::new(&ib, &ia, false));
    let mut p = pair(&ia, &ib);
    pass_cookie_challenge(&mut relay, t0, A, &mut p.a);
    let first = rekey(&mut relay, t0, &mut p);
    assert!(scans(&relay) >= 2, "first contact needed scans");

    // Rekeys at WireGuard's REKEY_AFTER_TIME, within and after the cookie generations that
    // remember the challenge: the pair's keys are tried first either way.
    let mut at = t0;
    let mut costs = vec![first];
    for _ in 0..3 {
        at += Duration::from_secs(120);
        relay.handle_timeout(at);
        costs.push(rekey(&mut relay, at, &mut p));
    }
    println!("mac1 computations per handshake of a known pair among 10,002 keys: {costs:?}");
    assert!(costs.iter().all(|c| *c <= 4), "{costs:?}");
}

/// A type-1 datagram of random bytes: no valid mac1, and a random mac2 unless zeroed.
fn junk_initiation(rng: &mut StdRng, zero_mac2: bool) -> Vec<u8> {
    let mut d: Vec<u8> = (0..148).map(|_| rng.r#gen()).collect();
    d[..4].copy_from_slice(&[1, 0, 0, 0]);
    if zero_mac2 {
        d[132..].fill(0);
    }
    d
}

fn random_source(rng: &mut StdRng) -> SocketAddr {
    SocketAddr::from(([198, 18, rng.r#gen(), rng.r#gen()], rng.r#gen()))
}

#[test]
fn a_junk_flood_spends_only_its_share_of_the_scan_budget() {
    let t0 = Instant::now();
    let (ia, ib, ic) = (Identity::random(), Identity::random(), Identity::random());
    let mut relay = allow_relay_with(t0, &[&ia, &ib, &ic], 10_000);
    pass_cookie_challenge(&mut relay, t0, B, &mut Peer::new(&ib, &ia, false));
    let mut p = pair(&ia, &ib);
    pass_cookie_challenge(&mut relay, t0, A, &mut p.a);
    rekey(&mut relay, t0, &mut p);

    // 3,000 junk initiations a second from random sources, for 2 s.
    let mut rng = StdRng::seed_from_u64(3);
    let mut admitted = 0u32;
    let mut now = t0;
    for _ in 0..6000 {
        now += Duration::from_micros(333);
        let mut d = junk_initiation(&mut rng, false);
        match relay.handle_input(now, random_source(&mut rng), &mut d) {
            Output::Scan(request) => {
                assert_eq!(request.class(), ScanClass::Other);
                admitted += 1;
            }
            Output::Drop(DropReason::ScanBudget) => {}
            other => panic!("junk got {other:?}"),
        }
    }
    // A sixteenth of the default budget, with a one-second burst, over 2 s.
    let bound = 3 * wpex_proto::DEFAULT_SCAN_BUDGET / 16 / 10_003 + 1;
    println!("junk scans admitted: {admitted} of 6000 (bound {bound})");
    assert!(admitted > 0 && admitted <= bound, "{admitted} > {bound}");

    // Meanwhile the known pair rekeys without a scan, and a new peer's first initiation is
    // scanned and challenged at once.
    assert!(rekey(&mut relay, now, &mut p) <= 4);
    let (out, _) = feed(&mut relay, now, C, &Peer::new(&ic, &ia, false).initiation());
    assert!(matches!(out, Output::CookieReply(..)), "{out:?}");
}

#[test]
fn a_flood_from_one_address_is_held_to_that_address_share() {
    let t0 = Instant::now();
    let ia = Identity::random();
    let mut relay = allow_relay_with(t0, &[&ia], 100);
    let mut rng = StdRng::seed_from_u64(4);
    let from = addr(C);
    let outcomes: Vec<Output> = (0..100)
        .map(|_| relay.handle_input(t0, from, &mut junk_initiation(&mut rng, true)))
        .collect();
    let admitted = outcomes
        .iter()
        .filter(|o| matches!(o, Output::Scan(_)))
        .count();
    assert_eq!(admitted, 5 * wpex_proto::SCAN_SOURCE_RATE as usize, "burst");
    assert_eq!(
        relay.stats().dropped(DropReason::ScanSourceLimited),
        100 - admitted as u64
    );
}

/// Data from B to A's index: where does the relay send it?
fn b_to_a(relay: &mut Relay, now: Instant, p: &mut Pair) -> Output {
    let d = p.b.send(&ipv4_packet(b"to A"));
    feed(relay, now, B, &d).0
}

fn a_to_b(relay: &mut Relay, now: Instant, from: &str, p: &mut Pair) -> Output {
    let d = p.a.send(&ipv4_packet(b"to B"));
    feed(relay, now, from, &d).0
}

const A_REBOUND: &str = "198.51.100.10:60001";

/// An open relay that has carried a handshake and data both ways between A and B; with A's
/// first data packet.
fn open_session(t0: Instant) -> (Relay, Pair, Vec<u8>) {
    let mut relay = open_relay(t0);
    let (ia, ib) = (Identity::random(), Identity::random());
    let mut p = pair(&ia, &ib);
    register(&mut relay, t0, B, &mut Peer::new(&ib, &ia, false));
    let (from_a, _) = handshake_and_data(&mut relay, t0, &mut p);
    (relay, p, from_a)
}

#[test]
fn a_rebound_peer_is_reached_beside_its_quiet_endpoint_within_a_second() {
    let t0 = Instant::now();
    let (mut relay, mut p, _) = open_session(t0);

    // A's NAT rebinds. While A's endpoint was heard within ROAM_QUIET, the new source is not
    // trusted: a busy peer cannot be joined by a forger.
    let soon = t0 + ROAM_QUIET / 2;
    assert_eq!(
        a_to_b(&mut relay, soon, A_REBOUND, &mut p),
        Output::Drop(DropReason::UnexpectedSource)
    );
    // Once the old endpoint has been quiet that long, the new source's data is forwarded and
    // traffic for A goes to both addresses.
    let later = t0 + ROAM_QUIET;
    assert_eq!(
        a_to_b(&mut relay, later, A_REBOUND, &mut p),
        Output::Forward(addr(B))
    );
    assert_eq!(relay.stats().roams, 1);
    assert_eq!(
        b_to_a(&mut relay, later, &mut p),
        Output::ForwardBoth([addr(A), addr(A_REBOUND)])
    );
    // A third source cannot displace a candidate that keeps sending.
    assert_eq!(
        a_to_b(&mut relay, later, FORGER, &mut p),
        Output::Drop(DropReason::UnexpectedSource)
    );
    // If A speaks from its endpoint again, the stand-in is dropped.
    assert_eq!(
        a_to_b(&mut relay, later, A, &mut p),
        Output::Forward(addr(B))
    );
    assert_eq!(b_to_a(&mut relay, later, &mut p), Output::Forward(addr(A)));
}

#[test]
fn an_idle_peer_that_rebinds_is_reached_after_its_next_keepalive() {
    let t0 = Instant::now();
    let (mut relay, mut p, _) = open_session(t0);
    // PersistentKeepalive = 25: A's next keepalive comes from its new NAT port.
    let keepalive_at = t0 + Duration::from_secs(25);
    assert_eq!(
        a_to_b(&mut relay, keepalive_at, A_REBOUND, &mut p),
        Output::Forward(addr(B))
    );
    // B speaks 30 s after the rebinding: A is reached at its new address.
    let ping_at = t0 + Duration::from_secs(30);
    let d = p.b.send(&ipv4_packet(b"ping"));
    let (out, d) = feed(&mut relay, ping_at, B, &d);
    assert_eq!(out, Output::ForwardBoth([addr(A), addr(A_REBOUND)]));
    assert_eq!(p.a.receive(&d).tunnel, vec![ipv4_packet(b"ping")]);
    assert_eq!(
        a_to_b(&mut relay, ping_at, A_REBOUND, &mut p),
        Output::Forward(addr(B)),
        "the reply from the new address goes through"
    );
}

#[test]
fn a_forger_beside_a_quiet_peer_gets_copies_but_takes_nothing_away() {
    let t0 = Instant::now();
    let (mut relay, mut p, from_a) = open_session(t0);
    // An observer replays A's packet from its own address while A is quiet.
    let quiet = t0 + Duration::from_secs(5);
    assert_eq!(
        feed(&mut relay, quiet, FORGER, &from_a).0,
        Output::Forward(addr(B))
    );
    // B's traffic still reaches A; the forger only gets copies of ciphertext it already sees.
    assert_eq!(
        b_to_a(&mut relay, quiet, &mut p),
        Output::ForwardBoth([addr(A), addr(FORGER)])
    );
    // A's next packet from its endpoint ends it.
    a_to_b(&mut relay, quiet, A, &mut p);
    assert_eq!(b_to_a(&mut relay, quiet, &mut p), Output::Forward(addr(A)));
}

/// Issue 19: a stand-in has not shown it receives, so one forged packet from a spoofed victim
/// reflects at most ROAM_CREDIT of the side's datagrams, whatever B streams; a stand-in that
/// keeps talking, as a rebound peer does, keeps getting them.
#[test]
fn one_forged_packet_reflects_a_bounded_number_of_datagrams() {
    let t0 = Instant::now();
    let (mut relay, mut p, from_a) = open_session(t0);
    let quiet = t0 + Duration::from_secs(5);
    assert_eq!(
        feed(&mut relay, quiet, FORGER, &from_a).0,
        Output::Forward(addr(B))
    );
    let reflected = (0..100)
        .filter(|_| {
            b_to_a(&mut relay, quiet, &mut p) == Output::ForwardBoth([addr(A), addr(FORGER)])
        })
        .count();
    assert_eq!(reflected, usize::from(ROAM_CREDIT));
    assert_eq!(relay.stats().withheld, 100 - u64::from(ROAM_CREDIT));

    // A rebound peer that talks: one datagram from it, two to it, for as long as it lasts.
    let (mut relay, mut p, _) = open_session(t0);
    let later = t0 + ROAM_QUIET;
    for round in 0..50 {
        assert_eq!(
            a_to_b(&mut relay, later, A_REBOUND, &mut p),
            Output::Forward(addr(B))
        );
        for _ in 0..ROAM_CREDIT {
            assert_eq!(
                b_to_a(&mut relay, later, &mut p),
                Output::ForwardBoth([addr(A), addr(A_REBOUND)]),
                "round {round}"
            );
        }
    }
    assert_eq!(relay.stats().withheld, 0);
}

#[test]
fn a_new_peers_retry_gets_through_a_flood_of_well_formed_first_initiations() {
    let t0 = Instant::now();
    let (ia, ic) = (Identity::random(), Identity::random());
    let mut relay = allow_relay_with(t0, &[&ia, &ic], 10_000);
    let mut rng = StdRng::seed_from_u64(5);
    let mut now = t0;
    let mut admitted = 0;
    let mut flood = |relay: &mut Relay, now: &mut Instant, n: usize| {
        for _ in 0..n {
            *now += Duration::from_micros(100);
            let mut d = junk_initiation(&mut rng, true);
            let out = relay.handle_input(*now, random_source(&mut rng), &mut d);
            admitted += usize::from(matches!(out, Output::Scan(_)));
        }
    };
    // 10,000 junk initiations a second with the zero mac2 of a real first handshake: they
    // use up the fresh share, so C's first initiation is refused like theirs.
    flood(&mut relay, &mut now, 10_000);
    let mut c = Peer::new(&ic, &ia, false);
    let (out, _) = feed(&mut relay, now, C, &c.initiation());
    assert_eq!(out, Output::Drop(DropReason::ScanBudget));
    // C retries 5 s later, from the same address, with the flood still on.
    flood(&mut relay, &mut now, 50_000);
    let mut retry = c.initiation();
    let out = relay.handle_input(now, addr(C), &mut retry);
    let Output::Scan(request) = &out else {
        panic!("the retry is scanned: {out:?}")
    };
    assert_eq!(request.class(), ScanClass::Retry);
    let done = request.run(&retry);
    let out = relay.handle_scanned(now, addr(C), &mut retry, done);
    assert!(matches!(out, Output::CookieReply(..)), "{out:?}");
    println!("scans admitted to the flood: {admitted} of 60,000");
}

#[test]
fn a_fresh_scan_abandoned_by_a_busy_scan_thread_makes_the_retry_a_retry() {
    let t0 = Instant::now();
    let (ia, ic) = (Identity::random(), Identity::random());
    let mut relay = allow_relay_with(t0, &[&ia, &ic], 10);
    let mut c = Peer::new(&ic, &ia, false);
    let mut first = c.initiation();
    let out = relay.handle_input(t0, addr(C), &mut first);
    let Output::Scan(request) = &out else {
        panic!("the first initiation is scanned: {out:?}")
    };
    assert_eq!(request.class(), ScanClass::Fresh);
    // The scan thread's queue for fresh sources is full: the caller abandons the scan.
    relay.scan_abandoned(addr(C), request.class());
    assert_eq!(relay.stats().dropped(DropReason::ScanBudget), 1);
    let mut retry = c.initiation();
    let out = relay.handle_input(t0 + Duration::from_secs(5), addr(C), &mut retry);
    let Output::Scan(request) = &out else {
        panic!("the retry is scanned: {out:?}")
    };
    assert_eq!(request.class(), ScanClass::Retry);
}

#[test]
fn first_handshakes_borrow_the_idle_scan_budget_but_leave_its_reserve() {
    let t0 = Instant::now();
    let (ia, ib, ic) = (Identity::random(), Identity::random(), Identity::random());
    // 3 keys and a budget of 30,000 MACs a second: 10,000 scans, 2,500 of them the fresh share.
    let config = Config {
        access: Access::AllowList(AllowedKeys::new([ia.public, ib.public, ic.public])),
        scan_budget: 30_000,
        ..Config::default()
    };
    let mut relay = Relay::new(config, t0, [7; 32]);
    let mut rng = StdRng::seed_from_u64(9);
    let mut now = t0;
    let mut flood = |relay: &mut Relay, now: &mut Instant, per_second: u32, seconds: u32| {
        let (mut admitted, mut refused) = (0u32, 0u32);
        for _ in 0..per_second * seconds {
            *now += Duration::from_secs(1) / per_second;
            let mut d = junk_initiation(&mut rng, true);
            match relay.handle_input(*now, random_source(&mut rng), &mut d) {
                Output::Scan(request) => {
                    assert_eq!(request.class(), ScanClass::Fresh);
                    admitted += 1;
                }
                Output::Drop(DropReason::ScanBudget) => refused += 1,
                other => panic!("junk got {other:?}"),
            }
        }
        (admitted, refused)
    };
    // Three times the fresh share, within the budget: every first handshake is scanned, so a
    // new peer's is answered at once rather than after WireGuard's 5 s retry.
    let (admitted, refused) = flood(&mut relay, &mut now, 7_500, 2);
    assert_eq!((admitted, refused), (15_000, 0));
    let mut c = Peer::new(&ic, &ia, false);
    let (out, _) = feed(&mut relay, now, C, &c.initiation());
    let Output::CookieReply(_, reply) = out else {
        panic!("C's first initiation is challenged at once: {out:?}")
    };
    assert_eq!(c.receive(&reply).error, None);

    // Past the budget, they take all of it but the reserve of a quarter: 7,500 scans a second.
    let (admitted, refused) = flood(&mut relay, &mut now, 50_000, 2);
    println!("a flood past the budget: {admitted} of 100,000 scanned, {refused} refused");
    assert!(
        admitted <= 2 * 10_000 + 10_000,
        "{admitted}: more than the budget"
    );
    assert!(
        admitted >= 2 * 7_500 - 10,
        "{admitted}: the reserve only is kept"
    );
    // A new peer's first handshake now waits for its retry, as with no borrowing at all, and
    // C, back with the relay's cookie, goes through.
    let (out, _) = feed(&mut relay, now, B, &Peer::new(&ib, &ia, false).initiation());
    assert_eq!(out, Output::Drop(DropReason::ScanBudget));
    let (out, _) = feed(&mut relay, now, C, &c.initiation());
    assert!(
        matches!(out, Output::Broadcast(_) | Output::Forward(_)),
        "{out:?}"
    );
}
