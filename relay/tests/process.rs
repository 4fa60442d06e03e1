//! The `wpex` binary as a process: startup errors, and the allow-list following `--allow-file`
//! without a restart, observed through `/metrics`.

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wpex_testkit::peer::{Endpoint, Identity, Peer, ipv4_packet};
use wpex_testkit::{Children, eventually, free_port, http_get, sample, try_http_get};

const BIN: &str = env!("CARGO_BIN_EXE_wpex");
/// The issue's bound for a key change to take effect.
const KEY_CHANGE_BOUND: Duration = Duration::from_secs(2);

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

fn free_tcp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")))
}

/// Runs the binary to completion and returns its exit code and everything it printed.
fn run_to_exit(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run wpex");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Replaces a file the way an editor does, so a reader never sees it half-written.
fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write temp");
    fs::rename(&tmp, path).expect("rename");
}

fn key_file(ids: &[&Identity]) -> String {
    ids.iter().map(|i| format!("{}\n", i.public)).collect()
}

/// The relay binary as a child process on free loopback ports; its log is shown when it fails.
struct RelayProcess {
    children: Children,
    _logs: tempfile::TempDir,
    udp: SocketAddr,
    metrics: SocketAddr,
}

impl RelayProcess {
    fn start(extra: &[&str]) -> Self {
        let logs = tempfile::tempdir().expect("log dir");
        let mut children = Children::new(logs.path());
        // Free ports are picked by binding and letting go, so a test running beside this one
        // can take the same port first; the relay then exits, and a fresh pair is tried.
        for _ in 0..3 {
            let udp = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
            let metrics = free_tcp_addr();
            let mut command = Command::new(BIN);
            command
                .args(["--bind", "127.0.0.1", "--port", &udp.port().to_string()])
                .args(["--metrics-addr", &metrics.to_string()])
                .args(extra);
            children.spawn("wpex", command).expect("spawn wpex");
            // Until the server is up, connections may be refused or reset.
            let ready = eventually("/readyz answers 200", Duration::from_secs(10))
                .every(Duration::from_millis(20))
                .until_blocking(|| {
                    children.ensure_running()?;
                    Ok((try_http_get(metrics, "/readyz")?.0 == 200).then_some(()))
                });
            match ready {
                Ok(_) => {
                    return Self {
                        children,
                        _logs: logs,
                        udp,
                        metrics,
                    };
                }
                Err(e) => assert!(
                    !children.is_running("wpex"),
                    "{e:#}\n{}",
                    children.log("wpex")
                ),
            }
        }
        panic!(
            "the relay exited before it was ready, three times:\n{}",
            children.log("wpex")
        );
    }

    fn metrics(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics");
        assert_eq!(status, 200);
        body
    }

    fn sample(&self, series: &str) -> f64 {
        sample(&self.metrics(), series).unwrap_or_else(|| panic!("no sample {series}"))
    }

    /// Polls until `ok` holds; panics, with the relay's log, after `bound`. Returns how long it
    /// took.
    fn wait_until(&self, what: &str, bound: Duration, ok: impl Fn(&Self) -> bool) -> Duration {
        eventually(what, bound)
            .every(Duration::from_millis(20))
            .until_blocking(|| Ok(ok(self).then_some(())))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.children.log("wpex")))
            .1
    }

    fn still_running(&self) -> bool {
        self.children.is_running("wpex")
    }

    fn pid(&self) -> Option<u32> {
        self.children.pid("wpex")
    }
}

#[test]
fn startup_errors_name_the_problem() {
    let (code, out) = run_to_exit(&["--allow-file", "/nonexistent/wpex-keys"]);
    assert_ne!(code, 0);
    assert!(out.contains("/nonexistent/wpex-keys"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys");
    fs::write(
        &path,
        format!("{}\n# fine\nbogus\n", Identity::random().public),
    )
    .expect("write");
    let (code, out) = run_to_exit(&["--allow-file", path.to_str().expect("utf-8 path")]);
    assert_ne!(code, 0);
    assert!(out.contains("line 3") && out.contains("'bogus'"), "{out}");

    let (code, out) = run_to_exit(&["--allow", "AAAA"]);
    assert_eq!(code, 2);
    assert!(
        out.contains("invalid wireguard public key: 'AAAA'"),
        "{out}"
    );
}

/// Runs the binary until it exits or `bound` passes (then kills it); returns its exit code, if
/// it exited on its own, and what it printed.
fn run_with_bound(args: &[&str], bound: Duration) -> (Option<i32>, String) {
    let logs = tempfile::tempdir().expect("log dir");
    let mut children = Children::new(logs.path());
    let mut command = Command::new(BIN);
    command.args(args);
    children.spawn("wpex", command).expect("spawn wpex");
    let code = eventually("wpex exits", bound)
        .every(Duration::from_millis(20))
        .until_blocking(|| Ok(children.exit_status("wpex").map(|s| s.code())))
        .map_or_else(
            |_| {
                children.kill("wpex");
                None
            },
            |(code, _)| code,
        );
    (code, children.log("wpex"))
}

#[test]
fn a_second_relay_on_a_served_port_exits_with_address_in_use() {
    let first = RelayProcess::start(&[]);
    let port = first.udp.port().to_string();
    // The same address, and the dual-stack default that covers it.
    for bind in [&["--bind", "127.0.0.1"][..], &[]] {
        let args: Vec<&str> = bind.iter().copied().chain(["--port", &port]).collect();
        let (code, out) = run_with_bound(&args, Duration::from_secs(10));
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?}: exit {code:?}: {out}"
        );
        assert!(out.contains("already in use"), "{args:?}: {out}");
    }
    assert!(first.still_running(), "the running relay is untouched");
    assert_eq!(http_get(first.metrics, "/readyz").0, 200);
}

#[test]
fn an_empty_key_file_allows_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys");
    fs::write(&path, "# nobody yet\n").expect("write");
    let relay = RelayProcess::start(&["--allow-file", path.to_str().expect("utf-8 path")]);
    assert_eq!(relay.sample("wpex_allowed_keys"), 0.0);
    let (ia, ib) = (Identity::random(), Identity::random());
    let a = Endpoint::new(Peer::new(&ia, &ib, false), relay.udp);
    let mut a = a;
    let init = a.peer.initiation();
    a.send(&init);
    assert_eq!(
        a.try_recv(Duration::from_millis(300)),
        None,
        "not even a cookie reply"
    );
    relay.wait_until("the drop is counted", Duration::from_secs(2), |r| {
        sample(
            &r.metrics(),
            r#"wpex_dropped_packets_total{reason="mac1_invalid"}"#,
        ) == Some(1.0)
    });
}

/// Completes a handshake between two fresh endpoints and checks data both ways.
fn connect(relay: &RelayProcess, first: &Identity, second: &Identity) -> (Endpoint, Endpoint) {
    let mut x = Endpoint::new(Peer::new(first, second, false), relay.udp);
    let mut y = Endpoint::new(Peer::new(second, first, false), relay.udp);
    // The relay has a worker per core: x's initiation must not overtake y's registration.
    let before = relay.sample("wpex_endpoints");
    y.initiate(true);
    relay.wait_until("the relay registers y", Duration::from_secs(5), |r| {
        r.sample("wpex_endpoints") > before
    });
    x.initiate(true);
    y.answer();
    x.answer();
    y.answer();
    assert_ping(&mut x, &mut y);
    (x, y)
}

fn assert_ping(x: &mut Endpoint, y: &mut Endpoint) {
    let ping = x.peer.send(&ipv4_packet(b"ping"));
    x.send(&ping);
    assert_eq!(y.answer(), vec![ipv4_packet(b"ping")]);
    let pong = y.peer.send(&ipv4_packet(b"pong"));
    y.send(&pong);
    assert_eq!(x.answer(), vec![ipv4_packet(b"pong")]);
}

#[test]
fn keys_follow_the_file_without_a_restart() {
    let [ia, ib, ic, id] = std::array::from_fn(|_| Identity::random());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("allowed");
    fs::write(&path, key_file(&[&ia, &ic, &id])).expect("write");
    let relay = RelayProcess::start(&["--allow-file", path.to_str().expect("utf-8 path")]);
    let pid = relay.pid();
    assert_eq!(relay.sample("wpex_allowed_keys"), 3.0);

    // B is not allowed yet: A's initiation to B names no allowed key and goes nowhere.
    let mut early = Endpoint::new(Peer::new(&ia, &ib, false), relay.udp);
    let init = early.peer.initiation();
    early.send(&init);
    relay.wait_until("A's initiation to B is dropped", KEY_CHANGE_BOUND, |r| {
        sample(
            &r.metrics(),
            r#"wpex_dropped_packets_total{reason="mac1_invalid"}"#,
        ) == Some(1.0)
    });

    // Adding B takes effect without a restart.
    publish(&path, &key_file(&[&ia, &ib, &ic, &id]));
    let took = relay.wait_until("B's key is loaded", KEY_CHANGE_BOUND, |r| {
        sample(&r.metrics(), "wpex_allowed_keys") == Some(4.0)
    });
    println!("key added -> loaded in {took:?}");
    let (mut a, mut b) = connect(&relay, &ia, &ib);
    let (mut c, mut d) = connect(&relay, &ic, &id);
    assert_eq!(relay.sample("wpex_sessions"), 2.0);

    // A garbage update is rejected whole: the last good set stays, traffic flows on.
    publish(&path, "this is not a key\n");
    relay.wait_until("the rejection is counted", KEY_CHANGE_BOUND, |r| {
        sample(&r.metrics(), r#"wpex_key_reloads_total{result="failure"}"#) == Some(1.0)
    });
    assert_eq!(relay.sample("wpex_allowed_keys"), 4.0);
    assert_ping(&mut a, &mut b);

    // Removing B cuts A<->B at once; C<->D is untouched.
    publish(&path, &key_file(&[&ia, &ic, &id]));
    let took = relay.wait_until("A<->B is cut", KEY_CHANGE_BOUND, |r| {
        sample(&r.metrics(), "wpex_sessions") == Some(1.0)
    });
    println!("key removed -> session cut in {took:?}");
    let stale = a.peer.send(&ipv4_packet(b"after revocation"));
    a.send(&stale);
    assert_eq!(
        b.try_recv(Duration::from_millis(300)),
        None,
        "nothing reaches B any more"
    );
    assert_ping(&mut c, &mut d);

    let m = relay.metrics();
    assert_eq!(
        sample(&m, r#"wpex_key_reloads_total{result="success"}"#),
        Some(2.0)
    );
    assert!(
        sample(&m, r#"wpex_forwarded_packets_total{type="transport_data"}"#).unwrap_or(0.0) >= 10.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            r#"wpex_dropped_packets_total{reason="unknown_receiver"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "wpex_cookie_replies_total").unwrap_or(0.0) >= 4.0,
        "{m}"
    );
    let handshake_of_c = format!(
        r#"wpex_key_last_handshake_timestamp_seconds{{key="{}"}}"#,
        ic.public
    );
    assert!(sample(&m, &handshake_of_c).unwrap_or(0.0) > 1.7e9, "{m}");
    assert!(
        !m.contains(&ib.public.to_string()),
        "a removed key leaves the metrics"
    );

    assert!(relay.still_running());
    assert_eq!(relay.pid(), pid, "same process throughout");
    assert_eq!(http_get(relay.metrics, "/healthz").0, 200);
}

#[test]
fn a_directory_of_key_files_is_one_list_followed_as_files_come_and_go() {
    let [ia, ib, ic, id] = std::array::from_fn(|_| Identity::random());
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("keys-0"), key_file(&[&ia, &ib])).expect("write");
    fs::write(dir.path().join("keys-1"), key_file(&[&ic])).expect("write");
    let relay = RelayProcess::start(&["--allow-file", dir.path().to_str().expect("utf-8 path")]);
    assert_eq!(relay.sample("wpex_allowed_keys"), 3.0);
    connect(&relay, &ia, &ib);

    publish(&dir.path().join("keys-2"), &key_file(&[&id]));
    relay.wait_until("a new file's key is loaded", KEY_CHANGE_BOUND, |r| {
        sample(&r.metrics(), "wpex_allowed_keys") == Some(4.0)
    });
    // Removing a file removes its keys, and cuts A<->B at once.
    fs::remove_file(dir.path().join("keys-0")).expect("remove");
    relay.wait_until("the removed file's keys are gone", KEY_CHANGE_BOUND, |r| {
        sample(&r.metrics(), "wpex_allowed_keys") == Some(2.0)
            && sample(&r.metrics(), "wpex_sessions") == Some(0.0)
    });
}
