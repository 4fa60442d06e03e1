//! The relay binary between real WireGuard peers (boringtun-cli and wireguard-go), each behind its
//! own NAT in network namespaces. Run as root, after `e2e/install-deps.sh` and
//! `cargo build -p wpex` (or with `WPEX_BIN` pointing at a relay binary):
//! `cargo test -p wpex-e2e --test relay_netns -- --ignored --test-threads=1 --nocapture`.
//! A failing test prints every process's log and the relay's metrics, and keeps its files.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wpex_e2e::netns::{Host, Lab, exec};
use wpex_e2e::relay::Relay;
use wpex_e2e::wg::{Peer, PeerKind, wait_for_ping};
use wpex_testkit::{eventually, sample};

use PeerKind::{BoringTun, WireGuardGo};

/// A fair bound for a first handshake: allow-list mode costs one 5 s WireGuard retry.
const CONNECT: Duration = Duration::from_secs(30);
const MTU: u16 = 1420;

struct Setup {
    lab: Lab,
    relay: Relay,
}

fn setup(relay_args: &[&str]) -> Result<Setup> {
    let mut lab = Lab::new()?;
    let relay_host = lab.public_host("relay", 1)?;
    let relay = Relay::start(&mut lab, &relay_host, relay_args)?;
    Ok(Setup { lab, relay })
}

/// Two peers behind their own NATs, each configured with the other through the relay.
fn natted_pair(s: &mut Setup, a: PeerKind, b: PeerKind) -> Result<(Peer, Peer)> {
    let ha = s.lab.natted_host("a")?;
    let hb = s.lab.natted_host("b")?;
    let pa = Peer::start(&mut s.lab, &ha, a, 1, MTU)?;
    let pb = Peer::start(&mut s.lab, &hb, b, 2, MTU)?;
    pa.connect(&pb, s.relay.addr)?;
    pb.connect(&pa, s.relay.addr)?;
    Ok((pa, pb))
}

fn open_mode(a: PeerKind, b: PeerKind) -> Result<()> {
    let mut s = setup(&[])?;
    let (pa, pb) = natted_pair(&mut s, a, b)?;
    let took = wait_for_ping(&pa, &pb, CONNECT)?;
    println!(
        "open mode, {a:?} <-> {b:?}: first ping both ways {took:?} after configuring, {:?} after starting the peers",
        since_start(&pa, &pb)
    );
    let m = s.relay.metrics()?;
    ensure!(
        sample(&m, "wpex_sessions") >= Some(1.0),
        "no session in metrics:\n{m}"
    );
    ensure!(
        sample(&m, r#"wpex_forwarded_packets_total{type="transport_data"}"#) > Some(0.0),
        "no data forwarded:\n{m}"
    );
    // Each side sees the other at the relay's address, with a handshake done.
    for (x, y) in [(&pa, &pb), (&pb, &pa)] {
        let seen = x.wg_show()?;
        let other = seen.iter().find(|p| p.public_key == y.public_key);
        ensure!(
            other.is_some_and(
                |p| p.endpoint == Some(s.relay.addr.to_string()) && p.handshake_age.is_some()
            ),
            "{} sees {}: {other:?}",
            x.iface,
            y.iface
        );
    }
    s.lab.pass();
    Ok(())
}

/// Time since the later of two peers was started.
fn since_start(a: &Peer, b: &Peer) -> Duration {
    a.started.max(b.started).elapsed()
}

#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn open_mode_boringtun_pair() -> Result<()> {
    open_mode(BoringTun, BoringTun)
}

#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn open_mode_wireguard_go_pair() -> Result<()> {
    open_mode(WireGuardGo, WireGuardGo)
}

#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn open_mode_mixed_pair() -> Result<()> {
    open_mode(BoringTun, WireGuardGo)
}

/// Deletes a namespace made outside the lab when the test ends.
struct ForeignNs(String);

impl Drop for ForeignNs {
    fn drop(&mut self) {
        let _ = wpex_e2e::netns::run("ip", &["netns", "del", &self.0]);
    }
}

/// The shape a Kubernetes e2e will use: the relay lives in a namespace the lab did not make (a
/// node's) plugged into the internet with [`Lab::attach`]; the peers only need its address.
#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn a_relay_in_a_foreign_namespace_is_reachable() -> Result<()> {
    let mut lab = Lab::new()?;
    // Named after the lab, so a crashed run's leftover is found by the next run's clean-up.
    let node = ForeignNs(format!("{}-node", lab.prefix));
    wpex_e2e::netns::run("ip", &["netns", "add", &node.0])?;
    let host = lab.attach(&node.0, 7)?;
    let relay = Relay::start(&mut lab, &host, &[])?;
    let ha = lab.natted_host("a")?;
    let hb = lab.natted_host("b")?;
    let pa = Peer::start(&mut lab, &ha, WireGuardGo, 1, MTU)?;
    let pb = Peer::start(&mut lab, &hb, BoringTun, 2, MTU)?;
    pa.connect(&pb, relay.addr)?;
    pb.connect(&pa, relay.addr)?;
    wait_for_ping(&pa, &pb, CONNECT)?;
    let prefix = lab.prefix.clone();
    lab.pass();
    drop(lab);
    // The lab removed its own namespaces and left the foreign one to its owner.
    let left = wpex_e2e::netns::run("ip", &["netns", "list"])?;
    let left: Vec<&str> = left
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .collect();
    ensure!(left == [node.0.as_str()], "left behind: {left:?}");
    Ok(())
}

#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn allow_list_with_both_keys_connects() -> Result<()> {
    let mut lab = Lab::new()?;
    let relay_host = lab.public_host("relay", 1)?;
    let ha = lab.natted_host("a")?;
    let hb = lab.natted_host("b")?;
    // Keys must be known before the relay starts: make the peers first.
    let pa = Peer::start(&mut lab, &ha, WireGuardGo, 1, MTU)?;
    let pb = Peer::start(&mut lab, &hb, BoringTun, 2, MTU)?;
    let relay = Relay::start(
        &mut lab,
        &relay_host,
        &["--allow", &pa.public_key, "--allow", &pb.public_key],
    )?;
    pa.connect(&pb, relay.addr)?;
    pb.connect(&pa, relay.addr)?;
    let took = wait_for_ping(&pa, &pb, CONNECT)?;
    println!(
        "allow-list mode, WireGuardGo <-> BoringTun: first ping both ways {took:?} after configuring, {:?} after starting the peers (the relay started in between)",
        since_start(&pa, &pb)
    );
    let m = relay.metrics()?;
    ensure!(
        sample(&m, "wpex_cookie_replies_total") >= Some(2.0),
        "both addresses challenged:\n{m}"
    );
    ensure!(sample(&m, "wpex_sessions") >= Some(1.0), "{m}");
    lab.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn a_peer_whose_key_is_not_allowed_stays_out() -> Result<()> {
    let mut lab = Lab::new()?;
    let relay_host = lab.public_host("relay", 1)?;
    let (ha, hb, hc) = (
        lab.natted_host("a")?,
        lab.natted_host("b")?,
        lab.natted_host("c")?,
    );
    let pa = Peer::start(&mut lab, &ha, BoringTun, 1, MTU)?;
    let pb = Peer::start(&mut lab, &hb, WireGuardGo, 2, MTU)?;
    let pc = Peer::start(&mut lab, &hc, BoringTun, 3, MTU)?;
    let relay = Relay::start(
        &mut lab,
        &relay_host,
        &["--allow", &pa.public_key, "--allow", &pb.public_key],
    )?;
    // A would accept C: each is configured with the other.
    for (x, y) in [(&pa, &pb), (&pb, &pa), (&pa, &pc), (&pc, &pa)] {
        x.connect(y, relay.addr)?;
    }
    wait_for_ping(&pa, &pb, CONNECT)?;

    // C keeps trying for a fair while, in both directions, and never gets through.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let (ca, ac) = std::thread::scope(|s| {
            let ca = s.spawn(|| pc.ping_once(pa.tunnel_ip, None));
            let ac = s.spawn(|| pa.ping_once(pc.tunnel_ip, None));
            (ca.join().unwrap_or(true), ac.join().unwrap_or(true))
        });
        ensure!(!ca && !ac, "C and A reached each other through the relay");
    }
    // C's initiations name A's allowed key, so they reach A and A answers them (boringtun even
    // stamps a handshake time when it sends a response). A's response names C's key and is
    // dropped, so C, the initiator, never completes a handshake.
    ensure!(
        pc.handshake_age(&pa)?.is_none(),
        "C completed a handshake with A"
    );
    let m = relay.metrics()?;
    let dropped = sample(&m, r#"wpex_dropped_packets_total{reason="mac1_invalid"}"#);
    let cookies = sample(&m, "wpex_cookie_replies_total");
    println!(
        "not allowed: after 20 s of trying, C has no handshake; relay dropped {dropped:?} handshakes with an unknown mac1, sent {cookies:?} cookie replies"
    );
    ensure!(
        dropped > Some(0.0),
        "handshakes naming C's key were dropped:\n{m}"
    );
    // A, B and C were each challenged once: C's initiations did arrive.
    ensure!(cookies >= Some(3.0), "C was never challenged:\n{m}");
    // And A <-> B is unaffected.
    ensure!(pa.ping_once(pb.tunnel_ip, None), "A <-> B broke");
    lab.pass();
    Ok(())
}

/// Runs the probe binary in `host`'s namespace.
fn probe(lab: &Lab, host: &Host, args: &[&str]) -> Result<String> {
    let bin = env!("CARGO_BIN_EXE_udp-probe");
    let mut all = vec![bin];
    all.extend_from_slice(args);
    lab.exec(&host.ns, &all)
}

/// Registers a listener, which answers one initiation (so the relay knows it receives: an open
/// relay sends an address that has not shown it one copy per initiation it sent), floods 200
/// initiations from another host, and returns how many copies the listener received and how
/// long the flood window lasted (with the lab, still up so that a failed assertion can print
/// its logs).
fn broadcast_copies(relay_args: &[&str]) -> Result<(u32, Duration, Setup)> {
    let mut s = setup(relay_args)?;
    let listener = s.lab.public_host("lsn", 20)?;
    let flooder = s.lab.public_host("fld", 21)?;
    let relay = s.relay.addr.to_string();
    let start = Instant::now();
    let copies = std::thread::scope(|scope| -> Result<u32> {
        let listening = scope.spawn(|| probe(&s.lab, &listener, &["listen", &relay, "4"]));
        // Let the listener register, then answer one initiation, before the flood starts.
        std::thread::sleep(Duration::from_millis(500));
        probe(&s.lab, &flooder, &["flood", &relay, "1"])?;
        std::thread::sleep(Duration::from_millis(300));
        probe(&s.lab, &flooder, &["flood", &relay, "200"])?;
        let out = listening
            .join()
            .map_err(|_| anyhow::anyhow!("listener panicked"))??;
        out.trim().parse().context("listener count")
    })?;
    Ok((copies, start.elapsed(), s))
}

#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn broadcast_rate_limits_the_copies() -> Result<()> {
    // The control: without a limit every one of the 200 initiations is copied to the listener,
    // so a low count below is the limit's doing, not loss.
    let (unlimited, _, mut s) = broadcast_copies(&["--broadcast-rate", "0", "--source-rate", "0"])?;
    println!("--broadcast-rate 0: the listener received {unlimited} of 200 initiations");
    ensure!(
        unlimited == 200,
        "unlimited relay delivered {unlimited} of 200"
    );
    s.lab.pass();
    drop(s);

    let (limited, window, mut s) =
        broadcast_copies(&["--broadcast-rate", "2", "--source-rate", "0"])?;
    // Burst 5 x 2, then 2 per second over the whole window, rounded up.
    let bound = 10 + 2 * (window.as_secs() as u32 + 1);
    println!(
        "--broadcast-rate 2: the listener received {limited} of 200 (bound {bound} over {window:?})"
    );
    ensure!(limited >= 1, "the limit must not block everything");
    ensure!(
        limited <= bound,
        "{limited} copies exceed burst 10 + 2/s over {window:?}"
    );
    s.lab.pass();
    Ok(())
}

/// Packets counted by the first rule in `chain` of `ns` whose text contains `marker`.
fn rule_packets(lab: &Lab, ns: &str, chain: &str, marker: &str) -> Result<u64> {
    let table = lab.exec(ns, &["iptables", "-n", "-v", "-x", "-L", chain])?;
    table
        .lines()
        .find(|l| l.contains(marker))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no rule with {marker:?} in {chain}:\n{table}"))
}

/// Zero overhead, proven so that any overhead would fail.
///
/// The underlay MTU is 1500 on every link, IP fragments are dropped in every namespace of the
/// path, and the tunnel MTU is exactly 1500 - 20 (IPv4) - 8 (UDP) - 32 (WireGuard header and
/// tag) = 1440. A ping of 1412 bytes (+ 8 ICMP + 20 IP = 1440, already a multiple of WireGuard's
/// 16-byte padding) then makes outer datagrams of exactly 1500 bytes. If the relay added even one
/// byte, what it sends would exceed the relay host's 1500-byte link and need fragmenting, and the
/// fragments would be dropped (or the send fail with EMSGSIZE): the ping could not pass. Counters
/// on the relay host show the 1500-byte datagrams went in and came out at 1500 bytes. The same
/// ping size works over a direct WireGuard link, and one byte more fails on both, which shows
/// the fragment rules bite: relay and direct link carry the same maximum.
#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn the_relay_adds_zero_mtu_overhead() -> Result<()> {
    let mut s = setup(&[])?;
    let ha = s.lab.natted_host("a")?;
    let hb = s.lab.natted_host("b")?;
    let da = s.lab.public_host("da", 30)?;
    let db = s.lab.public_host("db", 31)?;
    drop_fragments_on_a_1500_byte_path(&s.lab)?;
    let relay_ns = s.relay.host.ns.clone();
    count_full_size_datagrams(&s.lab, &relay_ns)?;

    let pa = Peer::start(&mut s.lab, &ha, BoringTun, 1, TUNNEL_MTU)?;
    let pb = Peer::start(&mut s.lab, &hb, WireGuardGo, 2, TUNNEL_MTU)?;
    pa.connect(&pb, s.relay.addr)?;
    pb.connect(&pa, s.relay.addr)?;
    let via_relay = wait_for_ping(&pa, &pb, CONNECT)?;
    let via_relay_start = since_start(&pa, &pb);

    // The direct link: two public hosts configured with each other's address.
    let qa = Peer::start(&mut s.lab, &da, BoringTun, 3, TUNNEL_MTU)?;
    let qb = Peer::start(&mut s.lab, &db, WireGuardGo, 4, TUNNEL_MTU)?;
    for (x, y) in [(&qa, &qb), (&qb, &qa)] {
        s.lab
            .exec(&x.host.ns, &["wg", "set", &x.iface, "listen-port", "51820"])?;
        x.connect(y, SocketAddrV4::new(y.host.ip, 51820))?;
    }
    let direct = wait_for_ping(&qa, &qb, CONNECT)?;
    println!(
        "first ping both ways: through the relay {via_relay:?} after configuring ({via_relay_start:?} after starting the peers), direct link {direct:?} after configuring ({:?} after starting the peers)",
        since_start(&qa, &qb)
    );

    full_size_pings_pass(&s.lab, &relay_ns, (&pa, &pb), (&qa, &qb))?;
    one_byte_more_fails(&s.lab, (&pa, &pb), (&qa, &qb))?;
    println!(
        "largest ping payload, relay and direct: {FULL} bytes (tunnel MTU {TUNNEL_MTU} on a 1500-byte underlay)"
    );
    s.lab.pass();
    Ok(())
}

/// The MTU test's underlay, on every link.
const UNDERLAY_MTU: u32 = 1500;
/// The MTU test's tunnels: the underlay's 1500 less WireGuard's 60 bytes over IPv4.
const TUNNEL_MTU: u16 = 1440;
/// ICMP payload filling [`TUNNEL_MTU`].
const FULL: u16 = TUNNEL_MTU - 28;

/// Drops IP fragments in every namespace of the lab, and checks that every underlay link on the
/// path, bridge included, has an MTU of [`UNDERLAY_MTU`].
fn drop_fragments_on_a_1500_byte_path(lab: &Lab) -> Result<()> {
    for ns in lab.namespaces() {
        for chain in ["INPUT", "OUTPUT", "FORWARD"] {
            lab.exec(ns, &["iptables", "-A", chain, "-f", "-j", "DROP"])?;
        }
        let links = lab.exec(ns, &["ls", "/sys/class/net"])?;
        for link in links.split_whitespace().filter(|l| *l != "lo") {
            let mtu = lab.mtu(ns, link)?;
            ensure!(mtu == UNDERLAY_MTU, "{link} in {ns} has MTU {mtu}");
        }
    }
    Ok(())
}

/// Counts full-size datagrams into and out of the relay (rules without a target only count).
fn count_full_size_datagrams(lab: &Lab, relay_ns: &str) -> Result<()> {
    for (chain, port) in [("INPUT", "--dport"), ("OUTPUT", "--sport")] {
        lab.exec(
            relay_ns,
            &[
                "iptables", "-I", chain, "-p", "udp", port, "40000", "-m", "length", "--length",
                "1500",
            ],
        )?;
    }
    Ok(())
}

/// A ping filling the tunnel passes through the relay both ways and over the direct link, and
/// crosses the relay host at 1500 bytes in and out.
fn full_size_pings_pass(
    lab: &Lab,
    relay_ns: &str,
    (pa, pb): (&Peer, &Peer),
    (qa, qb): (&Peer, &Peer),
) -> Result<()> {
    ensure!(
        pa.ping_once(pb.tunnel_ip, Some(FULL)),
        "full-size ping through the relay"
    );
    ensure!(
        pb.ping_once(pa.tunnel_ip, Some(FULL)),
        "full-size ping back through the relay"
    );
    ensure!(
        qa.ping_once(qb.tunnel_ip, Some(FULL)),
        "full-size ping over the direct link"
    );
    let full_in = rule_packets(lab, relay_ns, "INPUT", "length 1500")?;
    let full_out = rule_packets(lab, relay_ns, "OUTPUT", "length 1500")?;
    println!("1500-byte datagrams at the relay: {full_in} in, {full_out} out");
    // Two pings, each a request and a reply.
    ensure!(
        full_in >= 4 && full_out == full_in,
        "1500-byte datagrams: {full_in} into the relay, {full_out} out"
    );
    Ok(())
}

/// One byte more than the underlay carries: must fail both ways, relay or not.
fn one_byte_more_fails(
    lab: &Lab,
    (pa, pb): (&Peer, &Peer),
    (qa, qb): (&Peer, &Peer),
) -> Result<()> {
    let bigger = (TUNNEL_MTU + 1).to_string();
    for p in [pa, qa] {
        lab.exec(&p.host.ns, &["ip", "link", "set", &p.iface, "mtu", &bigger])?;
    }
    ensure!(
        !pa.ping_once(pb.tunnel_ip, Some(FULL + 1)),
        "an oversized packet got through: fragments are not dropped"
    );
    ensure!(
        !qa.ping_once(qb.tunnel_ip, Some(FULL + 1)),
        "an oversized packet crossed the direct link"
    );
    Ok(())
}

/// Replaces the key file the way an editor does.
fn publish_keys(path: &std::path::Path, keys: &[&str]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        keys.iter().map(|k| format!("{k}\n")).collect::<String>(),
    )?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Polls the relay's metrics until `series` has `value`; returns how long that took.
fn wait_for_metric(relay: &Relay, series: &str, value: f64, bound: Duration) -> Result<Duration> {
    let ((), took) =
        eventually(format!("{series} reaches {value}"), bound).until_blocking(|| {
            let m = relay.metrics()?;
            // Not yet: the metrics are shown if time runs out.
            ensure!(sample(&m, series) == Some(value), "metrics:\n{m}");
            Ok(Some(()))
        })?;
    Ok(took)
}

/// Pings `from` -> `to` for `span` and fails if any ping gets through.
fn stays_unreachable(from: &Peer, to: &Peer, span: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < span {
        ensure!(
            !from.ping_once(to.tunnel_ip, None),
            "{} reached {}",
            from.iface,
            to.iface
        );
    }
    Ok(())
}

/// A relay following a key file, and four peers: A, which would accept the other three, B
/// (allowed from the start), C (allowed later) and D (never).
struct KeyFileSetup {
    relay: Relay,
    key_file: PathBuf,
    a: Peer,
    b: Peer,
    c: Peer,
    d: Peer,
}

impl KeyFileSetup {
    /// Starts the peers, then the relay allowing A and B; A <-> B ping, C stays out.
    fn start(lab: &mut Lab) -> Result<Self> {
        let relay_host = lab.public_host("relay", 1)?;
        let hosts: Vec<Host> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| lab.natted_host(n))
            .collect::<Result<_>>()?;
        let a = Peer::start(lab, &hosts[0], BoringTun, 1, MTU)?;
        let b = Peer::start(lab, &hosts[1], WireGuardGo, 2, MTU)?;
        let c = Peer::start(lab, &hosts[2], WireGuardGo, 3, MTU)?;
        let d = Peer::start(lab, &hosts[3], BoringTun, 4, MTU)?;
        let key_file = lab.dir().join("allowed-keys");
        publish_keys(&key_file, &[&a.public_key, &b.public_key])?;
        let relay = Relay::start(
            lab,
            &relay_host,
            &["--allow-file", &key_file.to_string_lossy()],
        )?;
        // A would accept B, C and D; each of them is configured with A.
        for other in [&b, &c, &d] {
            a.connect(other, relay.addr)?;
            other.connect(&a, relay.addr)?;
        }
        wait_for_ping(&a, &b, CONNECT)?;
        stays_unreachable(&c, &a, Duration::from_secs(8))?;
        Ok(Self {
            relay,
            key_file,
            a,
            b,
            c,
            d,
        })
    }
}

#[test]
#[ignore = "needs root, network namespaces and the tools from e2e/install-deps.sh"]
fn keys_follow_the_file_over_one_relay_process() -> Result<()> {
    let mut lab = Lab::new()?;
    let s = KeyFileSetup::start(&mut lab)?;
    let pid = lab.pid("relay").context("relay pid")?;
    key_added(&s)?;
    garbage_update_rejected(&s)?;
    let before = sample(
        &s.relay.metrics()?,
        r#"wpex_forwarded_packets_total{type="transport_data"}"#,
    );
    key_removed(&s)?;

    let m = s.relay.metrics()?;
    ensure!(
        sample(&m, r#"wpex_key_reloads_total{result="success"}"#) == Some(2.0),
        "{m}"
    );
    ensure!(
        sample(&m, r#"wpex_forwarded_packets_total{type="transport_data"}"#) > before,
        "{m}"
    );
    ensure!(
        sample(&m, r#"wpex_dropped_packets_total{reason="mac1_invalid"}"#) > Some(0.0),
        "{m}"
    );
    ensure!(
        lab.pid("relay") == Some(pid) && lab.is_running("relay"),
        "the relay was restarted"
    );
    lab.pass();
    Ok(())
}

/// Adding C's key lets C in, without restarting the relay.
fn key_added(s: &KeyFileSetup) -> Result<()> {
    let (a, b, c) = (&s.a, &s.b, &s.c);
    publish_keys(&s.key_file, &[&a.public_key, &b.public_key, &c.public_key])?;
    let loaded = wait_for_metric(&s.relay, "wpex_allowed_keys", 3.0, Duration::from_secs(2))?;
    let connected = wait_for_ping(a, c, CONNECT).with_context(|| {
        let show = |p: &Peer| exec(&p.host.ns, &["wg", "show", &p.iface]).unwrap_or_default();
        format!("A:\n{}\nC:\n{}", show(a), show(c))
    })?;
    println!("key added: loaded after {loaded:?}, C <-> A pinging {connected:?} later");
    Ok(())
}

/// A garbage update is rejected whole: the last good set stays and D stays out.
fn garbage_update_rejected(s: &KeyFileSetup) -> Result<()> {
    std::fs::write(s.key_file.with_extension("tmp"), "not a key\n")?;
    std::fs::rename(s.key_file.with_extension("tmp"), &s.key_file)?;
    wait_for_metric(
        &s.relay,
        r#"wpex_key_reloads_total{result="failure"}"#,
        1.0,
        Duration::from_secs(2),
    )?;
    ensure!(sample(&s.relay.metrics()?, "wpex_allowed_keys") == Some(3.0));
    stays_unreachable(&s.d, &s.a, Duration::from_secs(8))?;
    ensure!(
        s.c.ping_once(s.a.tunnel_ip, None),
        "C lost A after a rejected update"
    );
    Ok(())
}

/// Removing C's key cuts C's live session at once; A <-> B keeps pinging.
fn key_removed(s: &KeyFileSetup) -> Result<()> {
    let (a, b, c) = (&s.a, &s.b, &s.c);
    publish_keys(&s.key_file, &[&a.public_key, &b.public_key])?;
    let ((), stopped) = eventually("C's traffic stops after removal", Duration::from_secs(2))
        .every(Duration::ZERO)
        .until_blocking(|| Ok((!c.ping_once(a.tunnel_ip, None)).then_some(())))?;
    println!("key removed: C's traffic stopped within {stopped:?}");
    stays_unreachable(c, a, Duration::from_secs(5))?;
    ensure!(
        a.ping_once(b.tunnel_ip, None) && b.ping_once(a.tunnel_ip, None),
        "A <-> B broke"
    );
    Ok(())
}
