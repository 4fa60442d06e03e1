//! Fast end-to-end runs of the benchmark: our relay (the debug build) and the minimal forwarder,
//! 2,000 datagrams a second for 1 s, in open mode and in allow-list mode, checked from the JSON
//! report.
//!
//! It builds nothing: the relay is `WPEX_BIN`, or the debug `wpex` beside this benchmark's binary,
//! or `target/debug/wpex` under the workspace root. Without one the test prints why and passes,
//! so `cargo test -p wpex-bench` works before the relay is built (`cargo build -p wpex`); under
//! CI (`CI` set) a missing relay fails it instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_wpex-bench");

/// `WPEX_BIN`; else the `wpex` built beside this benchmark (the same target directory, so the
/// same build as the one being tested, also under `CARGO_TARGET_DIR`); else
/// `target/debug/wpex` under the workspace root.
fn relay() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WPEX_BIN") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let beside = Path::new(BENCH).with_file_name("wpex");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/wpex");
    [beside, workspace].into_iter().find(|p| p.is_file())
}

/// The relay, or `None` after saying why the test is skipped.
fn relay_or_skip() -> Option<PathBuf> {
    let relay = relay();
    if relay.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no relay binary under CI; build it with `cargo build -p wpex` or set WPEX_BIN"
        );
        println!("skipped: no relay binary; build it with `cargo build -p wpex` or set WPEX_BIN");
    }
    relay
}

/// Runs the benchmark for 1 s at 2,000 pps with `args`; returns its stdout and JSON report.
fn run(relay: &Path, args: &str) -> (String, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("smoke.json");
    let out = Command::new(BENCH)
        .arg("--relay")
        .arg(relay)
        .args(args.split_whitespace())
        .args(["--rate", "2000"])
        .args(["--duration", "1", "--warmup", "0.3", "--drain", "0.2"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run wpex-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "wpex-bench failed: {stdout}{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("JSON");
    (stdout, report)
}

/// The figures of target `name` in the first cell, which must have no error.
fn figures<'a>(report: &'a Value, name: &str) -> &'a Value {
    let targets = report["cells"][0]["targets"].as_array().expect("targets");
    let t = targets
        .iter()
        .find(|t| t["target"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"));
    assert!(t["error"].is_null(), "{name}: {}", t["error"]);
    &t["figures"]
}

#[test]
fn ours_and_the_forwarder_deliver_and_cost_cpu() {
    let Some(relay) = relay_or_skip() else {
        return;
    };
    let (stdout, report) = run(&relay, "--pairs 1 --sessions 4");
    assert!(stdout.contains("ours / forwarder"), "no ratio in {stdout}");
    assert_eq!(report["cells"][0]["access"], "open");
    for name in ["ours", "forwarder"] {
        let f = figures(&report, name);
        assert_eq!(f["sessions_established"], 4, "{name}");
        let delivered = f["delivered"].as_u64().expect("delivered");
        let loss = f["loss_percent"].as_f64().expect("loss");
        let cpu = f["cpu_us_per_packet"].as_f64().expect("cpu per packet");
        assert!(delivered > 0, "{name}: nothing delivered");
        assert!(loss < 50.0, "{name}: loss {loss}%");
        assert!(cpu > 0.0, "{name}: CPU per packet {cpu}");
        assert!(f["rss_kib"].as_u64().is_some_and(|r| r > 0), "{name}: RSS");
        assert!(f["latency_us"]["p99"].as_f64().is_some(), "{name}: latency");
    }
    assert_eq!(report["params"]["rate_pps"], 2000);
    assert!(
        report["cells"][0]["ratios"][0]["cpu_per_packet"]
            .as_f64()
            .is_some()
    );
    assert_eq!(figures(&report, "ours")["cookie_rounds"], 0, "open mode");
}

#[test]
fn allow_mode_sets_up_through_cookie_rounds_and_delivers() {
    let Some(relay) = relay_or_skip() else {
        return;
    };
    let (stdout, report) = run(&relay, "--access allow --keys 20 --pairs 2 --sessions 3");
    let cell = &report["cells"][0];
    assert_eq!(cell["access"], "allow");
    assert_eq!(cell["keys"], 20);
    assert!(
        stdout.contains("ours      allow"),
        "mode not in the table: {stdout}"
    );
    let ours = figures(&report, "ours");
    // Three per pair: the later ones carry the mac2 of the cookie, as WireGuard's do.
    assert_eq!(ours["sessions_established"], 6);
    // The relay challenges every new address once: both peers of both pairs.
    let rounds = ours["cookie_rounds"].as_u64().expect("cookie rounds");
    assert!(rounds >= 4, "{rounds} cookie rounds with our relay");
    let delivered = ours["delivered"].as_u64().expect("delivered");
    let loss = ours["loss_percent"].as_f64().expect("loss");
    assert!(
        delivered > 0 && loss < 50.0,
        "ours: {delivered} delivered, {loss}% lost"
    );
    let command = report["cells"][0]["targets"][0]["command"]
        .as_str()
        .expect("command");
    assert!(command.contains("--allow-file"), "{command}");
    // The forwarder knows nothing of keys: the same handshakes pass without a cookie round.
    let forwarder = figures(&report, "forwarder");
    assert_eq!(forwarder["cookie_rounds"], 0);
    assert_eq!(forwarder["sessions_established"], 6);
}

#[test]
fn a_missing_relay_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(BENCH)
        .arg("--relay")
        .arg(dir.path().join("no-such-wpex"))
        .output()
        .expect("run wpex-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not found") && stderr.contains("cargo build --release -p wpex"),
        "{stderr}"
    );
}
