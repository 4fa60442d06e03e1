//! The relay binary under test, run on a host of a [`Lab`] as one of its processes.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wpex_testkit::{abort, binary, eventually, target_dir};

use crate::netns::{Host, Lab, exec};

/// The relay's name among the lab's processes (for [`Lab::pid`], [`Lab::is_running`]).
pub const NAME: &str = "relay";
/// The relay's UDP port on its host.
pub const PORT: u16 = 40000;

/// The relay binary under test: `WPEX_BIN`, else this workspace's debug build.
pub fn relay_bin() -> Result<PathBuf> {
    binary(
        "WPEX_BIN",
        target_dir().join("debug/wpex"),
        "build it with cargo build -p wpex",
    )
}

/// A release build of the relay, for tests that measure its CPU: `WPEX_RELEASE_BIN`, which
/// `e2e/test-all.sh` sets. A debug build's figures would mean nothing, so there is no fallback.
pub fn release_relay_bin() -> Result<PathBuf> {
    let path = std::env::var_os("WPEX_RELEASE_BIN")
        .map(PathBuf::from)
        .context(
            "WPEX_RELEASE_BIN is not set: this test measures CPU and needs a release relay \
         (cargo build --release -p wpex, then WPEX_RELEASE_BIN=$PWD/target/release/wpex)",
        )?;
    if !path.exists() {
        bail!("WPEX_RELEASE_BIN={} does not exist", path.display());
    }
    Ok(path)
}

/// A running relay: the host it runs on and the address peers reach it at.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Where it runs.
    pub host: Host,
    /// Its UDP address on the internet segment.
    pub addr: SocketAddrV4,
}

impl Relay {
    /// Runs the relay on `host`, port 40000, metrics on 127.0.0.1:9090 inside its namespace,
    /// and waits until it is ready. A failing test prints its non-zero metrics.
    pub fn start(lab: &mut Lab, host: &Host, args: &[&str]) -> Result<Self> {
        Self::start_with(lab, &relay_bin()?, host, args)
    }

    /// [`Relay::start`] with the relay binary `bin`.
    pub fn start_with(lab: &mut Lab, bin: &Path, host: &Host, args: &[&str]) -> Result<Self> {
        let port = PORT.to_string();
        let mut all = vec!["--port", &port, "--metrics-addr", "127.0.0.1:9090"];
        all.extend_from_slice(args);
        lab.spawn(&host.ns, NAME, bin, &all)?;
        let relay = Self {
            host: host.clone(),
            addr: SocketAddrV4::new(host.ip, PORT),
        };
        let diagnosed = relay.clone();
        lab.on_failure(move |_| diagnosed.nonzero_metrics());
        relay.wait_until_ready(lab)?;
        Ok(relay)
    }

    fn wait_until_ready(&self, lab: &Lab) -> Result<()> {
        eventually("the relay becomes ready", Duration::from_secs(10)).until_blocking(|| {
            if !lab.is_running(NAME) {
                return Err(abort("the relay exited"));
            }
            self.get("/readyz").map(|_| Some(()))
        })?;
        Ok(())
    }

    fn get(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:9090{path}");
        exec(&self.host.ns, &["curl", "-sSf", "--max-time", "2", &url])
    }

    /// The relay's /metrics text.
    pub fn metrics(&self) -> Result<String> {
        self.get("/metrics")
    }

    /// What a failed test prints about the relay: its metrics that are not zero.
    fn nonzero_metrics(&self) -> String {
        match self.metrics() {
            Ok(m) => {
                let lines: Vec<&str> = m
                    .lines()
                    .filter(|l| l.starts_with("wpex_") && !l.ends_with(" 0"))
                    .collect();
                format!("----- relay metrics (non-zero)\n{}", lines.join("\n"))
            }
            Err(e) => format!("----- relay metrics unavailable: {e:#}"),
        }
    }
}
