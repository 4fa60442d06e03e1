//! Real WireGuard peers (boringtun-cli and wireguard-go, configured with `wg`) and the relay
//! binary, inside a [`Lab`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{Host, Lab, run};

/// The installer pins the versions; the paths it installs to are read from it, so they agree.
const INSTALLER: &str = include_str!("../install-deps.sh");

fn pinned(variable: &str) -> &'static str {
    INSTALLER
        .lines()
        .find_map(|l| l.strip_prefix(variable)?.strip_prefix('='))
        .unwrap_or("unpinned")
}

fn tool(env: &str, default: String) -> Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if !path.exists() {
        bail!(
            "{} not found; run e2e/install-deps.sh or set {env}",
            path.display()
        );
    }
    Ok(path)
}

/// The relay binary under test.
pub fn relay_bin() -> Result<PathBuf> {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/wpex");
    let path = std::env::var_os("WPEX_BIN").map_or_else(|| PathBuf::from(default), PathBuf::from);
    if !path.exists() {
        bail!(
            "{} not found; build it with cargo build -p wpex",
            path.display()
        );
    }
    Ok(path)
}

/// The userspace WireGuard implementations the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    BoringTun,
    WireGuardGo,
}

/// A WireGuard interface on a host.
#[derive(Debug, Clone)]
pub struct Peer {
    pub host: Host,
    pub iface: String,
    pub tunnel_ip: Ipv4Addr,
    pub public_key: String,
}

/// A fresh key pair from `wg genkey` / `wg pubkey`: (private, public).
pub fn keypair() -> Result<(String, String)> {
    let private = run("wg", &["genkey"])?.trim().to_owned();
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("wg pubkey stdin")?
        .write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

impl Lab {
    /// Starts a WireGuard interface on `host` with tunnel address 192.0.2.`last`/24.
    pub fn wireguard(
        &mut self,
        host: &Host,
        imp: Implementation,
        last: u8,
        mtu: u16,
    ) -> Result<Peer> {
        let iface = format!("{}w{last}", self.prefix);
        let (private, public_key) = keypair()?;
        let key_file = self.dir().join(format!("{iface}.key"));
        std::fs::write(&key_file, &private)?;
        match imp {
            Implementation::BoringTun => {
                let version = pinned("BORINGTUN_VERSION");
                let default = format!("/var/cache/wpex/boringtun-cli-{version}/bin/boringtun-cli");
                let bin = tool("WPEX_BORINGTUN", default)?;
                // Connected sockets map one remote IP to one peer; behind a relay every peer has
                // the relay's address, so boringtun must demultiplex by index instead.
                let args = [
                    "--foreground",
                    "--disable-drop-privileges",
                    "--disable-connected-udp",
                    &iface,
                ];
                self.spawn(&host.ns, &iface, &bin, &args)?;
            }
            Implementation::WireGuardGo => {
                let version = pinned("WIREGUARD_GO_VERSION");
                let default = format!("/var/cache/wpex/wireguard-go-{version}/bin/wireguard");
                let bin = tool("WPEX_WIREGUARD_GO", default)?;
                self.spawn(&host.ns, &iface, &bin, &["-f", &iface])?;
            }
        }
        let socket = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        let start = Instant::now();
        while !socket.exists() {
            if start.elapsed() > Duration::from_secs(10) || !self.is_running(&iface) {
                self.dump_logs();
                bail!("{iface} ({imp:?}) did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key = key_file.to_string_lossy().into_owned();
        self.exec(&host.ns, &["wg", "set", &iface, "private-key", &key])?;
        let tunnel_ip = Ipv4Addr::new(192, 0, 2, last);
        self.exec(
            &host.ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{tunnel_ip}/24"),
                "dev",
                &iface,
            ],
        )?;
        self.exec(
            &host.ns,
            &["ip", "link", "set", &iface, "mtu", &mtu.to_string(), "up"],
        )?;
        Ok(Peer {
            host: host.clone(),
            iface,
            tunnel_ip,
            public_key,
        })
    }

    /// Configures `peer` to reach `other` through `endpoint`, with PersistentKeepalive = 25.
    pub fn connect(&self, peer: &Peer, other: &Peer, endpoint: SocketAddrV4) -> Result<()> {
        let allowed = format!("{}/32", other.tunnel_ip);
        let endpoint = endpoint.to_string();
        self.exec(
            &peer.host.ns,
            &[
                "wg",
                "set",
                &peer.iface,
                "peer",
                &other.public_key,
                "endpoint",
                &endpoint,
                "persistent-keepalive",
                "25",
                "allowed-ips",
                &allowed,
            ],
        )?;
        Ok(())
    }

    /// One ping from `from` to `to` across the tunnel. `size` with don't-fragment when given.
    pub fn ping_once(&self, from: &Peer, to: Ipv4Addr, size: Option<u16>) -> bool {
        let size_text = size.map(|s| s.to_string());
        let mut args = vec!["ping", "-c", "1", "-W", "1", "-I", &from.iface];
        if let Some(s) = &size_text {
            args.extend(["-M", "do", "-s", s]);
        }
        let target = to.to_string();
        args.push(&target);
        self.exec(&from.host.ns, &args).is_ok()
    }

    /// Pings both ways at once until both succeed (each side must send to register with the
    /// relay). Returns how long it took; fails after `bound`.
    pub fn wait_for_ping(&self, a: &Peer, b: &Peer, bound: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let (ab, ba) = std::thread::scope(|s| {
                let ab = s.spawn(|| self.ping_once(a, b.tunnel_ip, None));
                let ba = s.spawn(|| self.ping_once(b, a.tunnel_ip, None));
                (ab.join().unwrap_or(false), ba.join().unwrap_or(false))
            });
            if ab && ba {
                return Ok(start.elapsed());
            }
            if start.elapsed() > bound {
                self.dump_logs();
                bail!("{} <-> {} did not ping within {bound:?}", a.iface, b.iface);
            }
        }
    }

    /// Seconds since `peer`'s last handshake with `other`, if it ever had one.
    pub fn handshake_age(&self, peer: &Peer, other: &Peer) -> Result<Option<u64>> {
        let dump = self.exec(&peer.host.ns, &["wg", "show", &peer.iface, "dump"])?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Peer lines: public-key, preshared-key, endpoint, allowed-ips, latest-handshake, ...
        for line in dump.lines().skip(1) {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.first() == Some(&other.public_key.as_str()) {
                let latest: u64 = fields.get(4).and_then(|f| f.parse().ok()).unwrap_or(0);
                return Ok(match latest {
                    0 => None,
                    // boringtun reports an age rather than a timestamp.
                    t if t < 1_000_000_000 => Some(t),
                    t => Some(now.saturating_sub(t)),
                });
            }
        }
        bail!("{} has no peer {}", peer.iface, other.public_key)
    }

    /// Runs the relay on `host`, port 40000, metrics on 127.0.0.1:9090 inside its namespace,
    /// and waits until it is ready.
    pub fn relay(&mut self, host: &Host, args: &[&str]) -> Result<SocketAddrV4> {
        let bin = relay_bin()?;
        let mut all = vec!["--port", "40000", "--metrics-addr", "127.0.0.1:9090"];
        all.extend_from_slice(args);
        self.spawn(&host.ns, "relay", &bin, &all)?;
        let start = Instant::now();
        while self.metrics_path(host, "/readyz").is_err() {
            if start.elapsed() > Duration::from_secs(10) || !self.is_running("relay") {
                self.dump_logs();
                bail!("the relay did not become ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(SocketAddrV4::new(host.ip, 40000))
    }

    fn metrics_path(&self, relay: &Host, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:9090{path}");
        self.exec(&relay.ns, &["curl", "-sSf", "--max-time", "2", &url])
    }

    /// The relay's /metrics text.
    pub fn relay_metrics(&self, relay: &Host) -> Result<String> {
        self.metrics_path(relay, "/metrics")
    }
}

/// The value of one series in a Prometheus exposition, e.g. `wpex_sessions`.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
