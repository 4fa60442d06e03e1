//! The fuzz harness (`relay/fuzz/src/scenario.rs`) under `cargo test`, on stable: the committed
//! seed corpus replays with every invariant holding, seeds built from real boringtun handshakes
//! reach forwarding, roaming and unicast, and random inputs (proptest) keep the invariants.
//!
//! `WPEX_WRITE_FUZZ_SEEDS=1 cargo test -p wpex-proto --test fuzz_corpus` rewrites the seed corpus.

#[path = "../../fuzz/src/scenario.rs"]
mod scenario;

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use scenario::{Header, Index, Step, Summary, advance_byte, encode, flags, run};
use wpex_proto::DropReason;
use wpex_proto::message::Kind;
use wpex_testkit::peer::{Identity, Peer, ipv4_packet};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/relay_core")
}

fn run_ok(name: &str, input: &[u8]) -> Summary {
    match run(input) {
        Ok(s) => s,
        Err(e) => panic!("seed {name}: {e}"),
    }
}

const A: u8 = 0;
const B: u8 = 2;
const B_ROAMED: u8 = 3;
const FORGER: u8 = 7;
/// The IPv4-mapped IPv6 twin of A's address.
const MAPPED: u8 = 6;

fn raw(src: u8, bytes: &[u8]) -> Step {
    Step::Raw {
        src,
        advance: 1,
        fix_mac2: false,
        bytes: bytes.to_vec(),
    }
}

fn raw_with_cookie(src: u8, bytes: &[u8]) -> Step {
    Step::Raw {
        src,
        advance: 1,
        fix_mac2: true,
        bytes: bytes.to_vec(),
    }
}

fn wait(d: Duration) -> Step {
    Step::Timeout {
        advance: advance_byte(d),
    }
}

/// A real handshake A -> B and data both ways, in open or allow-list mode; in allow-list mode both
/// peers answer the relay's cookie challenge first. Then a rekey, B roaming to a new port after a
/// quiet second, a forger replaying B's packets, and expiry.
fn real_session(allow_list: bool) -> (Header, Vec<Step>) {
    let (ia, ib) = (Identity::random(), Identity::random());
    let (mut a, mut b) = (Peer::new(&ia, &ib, false), Peer::new(&ib, &ia, false));
    let header = Header {
        flags: flags::CUSTOM_KEYS | if allow_list { flags::ALLOW_LIST } else { 0 },
        config: 0b0011,
        keys: Some([ia.public.0, ib.public.0, [0x33; 32], [0x44; 32]]),
    };
    let mut steps = Vec::new();
    let knock = |steps: &mut Vec<Step>, src: u8, init: &[u8]| {
        steps.push(raw(src, init));
        if allow_list {
            steps.push(raw_with_cookie(src, init));
        }
    };
    // B becomes known (its own initiation has no one to reach), then A initiates.
    knock(&mut steps, B, &b.initiation());
    let init = a.initiation();
    knock(&mut steps, A, &init);
    let response = b.receive(&init).network.remove(0);
    steps.push(raw(B, &response));
    let keepalive = a.receive(&response).network.remove(0);
    steps.push(raw(A, &keepalive));
    assert_eq!(b.receive(&keepalive).error, None);
    let from_a = a.send(&ipv4_packet(b"hello from A"));
    steps.push(raw(A, &from_a));
    let from_b = b.send(&ipv4_packet(b"hello from B"));
    steps.push(raw(B, &from_b));
    // A rekey goes to B's proven home alone in allow-list mode.
    steps.push(raw(A, &a.initiation()));
    // B's NAT rebinds; after a quiet second its data comes from a new port.
    steps.push(wait(Duration::from_secs(2)));
    steps.push(raw(B_ROAMED, &b.send(&ipv4_packet(b"moved"))));
    steps.push(raw(A, &a.send(&ipv4_packet(b"to both"))));
    steps.push(Step::Replay {
        src: FORGER,
        advance: 0,
        pick: 255,
    });
    steps.push(raw(FORGER, &from_b));
    // The session dies after 180 s; its data then finds nobody.
    steps.push(wait(Duration::from_secs(170)));
    steps.push(raw(A, &a.send(&ipv4_packet(b"late"))));
    steps.push(wait(Duration::from_secs(20)));
    steps.push(raw(A, &from_a));
    steps.push(Step::TimeoutDue);
    (header, steps)
}

/// A real session, then B's key is revoked: its session is cut at once.
fn real_revocation() -> (Header, Vec<Step>) {
    let (header, mut steps) = real_session(true);
    steps.truncate(9);
    steps.push(Step::SetKeys { mask: 0b0001 });
    steps.push(Step::SessionData {
        src: 0,
        advance: 1,
        pick: 0,
    });
    (header, steps)
}

fn init(src: u8, sender: u32, key: u8, mac2: u8) -> Step {
    Step::Initiation {
        src,
        advance: 10,
        sender: Index::Value(sender),
        key,
        mac2,
        fill: 0x17,
    }
}

fn response(src: u8, sender: u32, receiver: u32, key: u8, mac2: u8) -> Step {
    Step::Response {
        src,
        advance: 10,
        sender: Index::Value(sender),
        receiver: Index::Value(receiver),
        key,
        mac2,
    }
}

fn session_data(src: u8, pick: u8) -> Step {
    Step::SessionData {
        src,
        advance: 5,
        pick,
    }
}

/// Synthetic seeds: each reaches a different part of the core in a few steps.
fn synthetic() -> Vec<(&'static str, Header, Vec<Step>)> {
    let open = |flags: u8| Header {
        flags,
        config: 0,
        keys: None,
    };
    let allow = |flags: u8, config: u8| Header {
        flags: flags::ALLOW_LIST | flags,
        config,
        keys: None,
    };
    // Open mode: B known, A -> B handshake, data each way (the indices are seen 0, 1, 2).
    let handshake = vec![
        init(B, 100, 0, 0),
        init(A, 200, 1, 0),
        response(B, 300, 200, 0, 0),
        session_data(0, 2),
        session_data(0, 1),
    ];
    // Allow-list: keys 0 (at A) and 1 (at B); both pass the cookie challenge, then handshake.
    let allow_handshake = vec![
        init(B, 100, 0, 0),
        init(B, 100, 0, 1),
        init(A, 200, 1, 0),
        init(A, 200, 1, 1),
        response(B, 300, 200, 0, 0),
        session_data(0, 2),
        session_data(0, 1),
        init(A, 201, 1, 0),
        init(B, 101, 0, 0),
    ];
    // A keeps sending, all of it through the routes; a forger two seconds after the core last
    // saw A is still refused, on the heard time the routes kept.
    let mut busy_through_routes = handshake.clone();
    for src in [0, 0, 0, 0x87] {
        busy_through_routes.push(Step::SessionData {
            src,
            advance: advance_byte(Duration::from_millis(500)),
            pick: 2,
        });
    }
    let mut roaming = handshake.clone();
    roaming.extend([
        wait(Duration::from_millis(1500)),
        session_data(0x83, 2),
        session_data(0, 1),
        session_data(0x87, 2),
        session_data(0, 2),
    ]);
    let mut expiry = handshake.clone();
    expiry.extend([
        Step::TimeoutDue,
        Step::TimeoutDue,
        Step::TimeoutDue,
        init(A, 202, 1, 0),
        Step::TimeoutDue,
        Step::TimeoutDue,
        Step::TimeoutDue,
        Step::TimeoutDue,
    ]);
    let mut malformed = Vec::new();
    for bytes in [
        vec![],
        vec![1, 0, 0],
        vec![9, 0, 0, 0, 1, 2, 3, 4],
        [vec![4, 0, 1, 0], vec![0; 40]].concat(),
        [vec![1, 0, 0, 0], vec![0; 100]].concat(),
        [vec![2, 0, 0, 0], vec![0; 88]].concat(),
        [vec![3, 0, 0, 0], vec![0; 60]].concat(),
        [vec![4, 0, 0, 0], vec![0; 27]].concat(),
    ] {
        malformed.push(raw(A, &bytes));
    }
    let collisions = vec![
        init(A, 5, 0, 0),
        init(B, 5, 0, 0),
        response(B, 5, 5, 0, 0),
        response(B, 6, 5, 0, 0),
        response(A, 7, 5, 0, 0),
        Step::CookieReply {
            src: B,
            advance: 0,
            receiver: Index::Small(5),
        },
        Step::CookieReply {
            src: FORGER,
            advance: 0,
            receiver: Index::Small(6),
        },
        Step::Data {
            src: A,
            advance: 0,
            receiver: Index::Small(5),
            extra: 0,
        },
        Step::Data {
            src: 4,
            advance: 0,
            receiver: Index::Small(9),
            extra: 200,
        },
    ];
    let crowd: Vec<Step> = (0..12u8)
        .map(|n| init(n % 8, 1000 + u32::from(n), n % 4, 0))
        .collect();
    let mut revoked = allow_handshake.clone();
    revoked.extend([
        Step::SetKeys { mask: 0b0001 },
        session_data(0, 2),
        Step::SetKeys { mask: 0b1111 },
        init(A, 203, 1, 0),
    ]);
    let mut opened_then_listed = handshake.clone();
    opened_then_listed.extend([Step::SetKeys { mask: 0b0011 }, init(A, 204, 1, 0)]);
    let junk_flood: Vec<Step> = (0..20u8)
        .map(|n| init(n % 8, 2000 + u32::from(n), 5, n % 4))
        .collect();
    let mut rotation = allow_handshake.clone();
    rotation.extend([
        wait(Duration::from_secs(121)),
        init(MAPPED, 205, 1, 0),
        init(MAPPED, 205, 1, 1),
        wait(Duration::from_secs(121)),
        init(MAPPED, 206, 1, 1),
    ]);
    vec![
        ("open-handshake", open(0), handshake.clone()),
        ("open-roaming", open(0), roaming),
        (
            "open-forger-beside-routed-peer",
            open(0),
            busy_through_routes,
        ),
        ("open-expiry", open(flags::AUTO_TIMEOUTS), expiry),
        ("open-malformed", open(0), malformed),
        ("open-index-collisions", open(0), collisions),
        (
            "open-small-table-rate-limited",
            open(
                flags::SMALL_TABLE
                    | (1 << flags::SOURCE_RATE_SHIFT)
                    | (1 << flags::BROADCAST_RATE_SHIFT),
            ),
            crowd.clone(),
        ),
        ("open-then-allow-list", open(0), opened_then_listed),
        ("allow-handshake", allow(0, 0b0011), allow_handshake),
        ("allow-revocation", allow(0, 0b0011), revoked),
        ("allow-junk-scan-budget", allow(0, 0b0001_0011), junk_flood),
        ("allow-cookie-rotation", allow(0, 0b0011), rotation),
        (
            "allow-small-table",
            allow(flags::SMALL_TABLE, 0b1111),
            crowd,
        ),
    ]
}

fn all_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = synthetic()
        .into_iter()
        .map(|(name, h, steps)| (name.to_owned(), encode(&h, &steps)))
        .collect();
    for (name, (h, steps)) in [
        ("real-open-session", real_session(false)),
        ("real-allow-session", real_session(true)),
        ("real-allow-revocation", real_revocation()),
    ] {
        seeds.push((name.to_owned(), encode(&h, &steps)));
    }
    seeds
}

#[test]
fn encoding_round_trips() {
    let (real_header, real_steps) = real_session(true);
    for (name, h, steps) in synthetic()
        .into_iter()
        .chain([("real", real_header, real_steps)])
    {
        let (h2, steps2) = scenario::decode(&encode(&h, &steps));
        assert_eq!((h2, steps2), (h, steps), "{name}");
    }
}

#[test]
fn real_handshake_seeds_reach_forwarding_roaming_and_unicast() {
    let (h, steps) = real_session(false);
    let open = run_ok("real-open-session", &encode(&h, &steps));
    assert!(open.stats.forwarded(Kind::Data).packets >= 3, "{open:?}");
    assert_eq!(open.stats.forwarded(Kind::Response).packets, 1);
    assert!(open.forward_both >= 1, "B's roamed port gets A's data too");
    // A's first data confirms B's index in the core; the rest each way takes the routes.
    assert!(open.routed >= 2, "{open:?}");

    let (h, steps) = real_session(true);
    let allow = run_ok("real-allow-session", &encode(&h, &steps));
    // Both peers' challenges (the forger's replay may draw a third).
    assert!(allow.cookies_learned >= 2, "{allow:?}");
    assert!(allow.stats.forwarded(Kind::Data).packets >= 3, "{allow:?}");
    assert!(allow.unicast_initiations >= 1, "the rekey went to B's home");
    assert!(allow.scans >= 1);
    assert!(allow.routed >= 2, "{allow:?}");

    let (h, steps) = real_revocation();
    let revoked = run_ok("real-allow-revocation", &encode(&h, &steps));
    assert_eq!(revoked.max_sessions, 1);
}

#[test]
fn synthetic_seeds_reach_what_they_are_named_for() {
    for (name, h, steps) in synthetic() {
        let s = run_ok(name, &encode(&h, &steps));
        assert_eq!(s.steps, steps.len(), "{name}");
        if name.ends_with("handshake") {
            assert_eq!(s.max_sessions, 1, "{name}: {s:?}");
            assert!(s.stats.forwarded(Kind::Data).packets >= 2, "{name}: {s:?}");
        }
        if name == "open-index-collisions" {
            // B's, on a half-open index; the forger's is the core's to drop.
            assert_eq!(s.routed_cookie_replies, 1, "{name}: {s:?}");
            assert_eq!(
                s.stats.dropped(DropReason::UnknownSource),
                1,
                "{name}: {s:?}"
            );
        }
        if name == "open-forger-beside-routed-peer" {
            assert!(s.routed >= 4, "{name}: {s:?}");
            assert_eq!(s.stats.roams, 0, "{name}: {s:?}");
            assert_eq!(s.stats.dropped(DropReason::UnexpectedSource), 1);
        }
    }
}

/// Writes the seeds when asked; the real-handshake ones differ on each write (fresh keys).
#[test]
fn committed_seed_corpus_replays_clean() {
    let dir = corpus_dir();
    if std::env::var_os("WPEX_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for (name, bytes) in all_seeds() {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
    let replayed = replay(&dir);
    assert!(replayed >= 10, "only {replayed} seeds in {}", dir.display());
}

/// `WPEX_FUZZ_REPLAY=PATH` (a file or a directory) replays fuzzer inputs, e.g. a crash e2e/fuzz.sh
/// reported, with the failing step and invariant in the panic message.
#[test]
fn replay_inputs_named_by_the_environment() {
    if let Some(path) = std::env::var_os("WPEX_FUZZ_REPLAY") {
        replay(Path::new(&path));
    }
}

fn replay(path: &Path) -> usize {
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .expect("read input directory")
            .map(|e| e.expect("directory entry").path())
            .collect()
    } else {
        vec![path.to_owned()]
    };
    for file in &files {
        let bytes = std::fs::read(file).expect("read input");
        run_ok(&file.display().to_string(), &bytes);
    }
    files.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes decode to random step sequences: a small fuzz pass on every `cargo test`.
    #[test]
    fn random_inputs_keep_every_invariant(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Err(e) = run(&data) {
            return Err(TestCaseError::fail(e));
        }
    }
}
