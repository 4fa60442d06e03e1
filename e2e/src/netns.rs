//! A lab of network namespaces: an "internet" bridge, public hosts on it, and hosts behind their
//! own iptables MASQUERADE NAT. Everything is torn down on drop, also after a panic.
//!
//! Addresses are documentation ranges and never leave the namespaces: the internet is
//! 198.51.100.0/24, each NAT's LAN a /28 of 203.0.113.0/24.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static LABS: AtomicU32 = AtomicU32::new(0);

/// A host: a network namespace with an address peers can reach it at (public or NATed).
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    /// Its own address: public for a public host, on the LAN for a NATed one.
    pub ip: Ipv4Addr,
}

pub struct Lab {
    /// Short and unique, so interface and namespace names stay under 15 characters.
    pub prefix: String,
    inet: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
    hosts: u8,
    nats: u8,
}

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    pub fn new() -> Result<Self> {
        let prefix = format!(
            "x{}{}",
            std::process::id() % 10_000,
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        remove_stale(&prefix);
        let inet = format!("{prefix}-inet");
        let mut lab = Self {
            prefix,
            inet: inet.clone(),
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir()?,
            hosts: 0,
            nats: 0,
        };
        lab.add_ns(&inet)?;
        lab.exec(&inet, &["ip", "link", "add", "br0", "type", "bridge"])?;
        lab.exec(&inet, &["ip", "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        run("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        self.exec(ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A veth pair with `a` in namespace `ns_a` and `b` in `ns_b`.
    fn veth(&self, a: &str, ns_a: &str, b: &str, ns_b: &str) -> Result<()> {
        run("ip", &["link", "add", a, "type", "veth", "peer", "name", b])?;
        run("ip", &["link", "set", a, "netns", ns_a])?;
        run("ip", &["link", "set", b, "netns", ns_b])?;
        Ok(())
    }

    /// Plugs namespace `ns` into the internet bridge as `ifname` with address `ip`.
    fn attach_to_internet(&mut self, ns: &str, ifname: &str, ip: Ipv4Addr) -> Result<()> {
        self.hosts += 1;
        let bridge_side = format!("{}b{}", self.prefix, self.hosts);
        let temp = format!("{}t{}", self.prefix, self.hosts);
        self.veth(&bridge_side, &self.inet.clone(), &temp, ns)?;
        let inet = self.inet.clone();
        self.exec(
            &inet,
            &["ip", "link", "set", &bridge_side, "master", "br0", "up"],
        )?;
        self.exec(ns, &["ip", "link", "set", &temp, "name", ifname])?;
        self.exec(
            ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", ifname],
        )?;
        self.exec(ns, &["ip", "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A host directly on the internet at 198.51.100.`last`.
    pub fn public_host(&mut self, name: &str, last: u8) -> Result<Host> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns)?;
        let ip = Ipv4Addr::new(198, 51, 100, last);
        self.attach_to_internet(&ns, "wan", ip)?;
        Ok(Host { ns, ip })
    }

    /// A host on the LAN of its own NAT. The NAT's public address is 198.51.100.(100 + n).
    pub fn natted_host(&mut self, name: &str) -> Result<Host> {
        self.nats += 1;
        let n = self.nats;
        let nat = format!("{}-nat{n}", self.prefix);
        self.add_ns(&nat)?;
        self.attach_to_internet(&nat, "wan", Ipv4Addr::new(198, 51, 100, 100 + n))?;
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns)?;
        let lan_nat = format!("{}n{n}", self.prefix);
        let lan_host = format!("{}h{n}", self.prefix);
        self.veth(&lan_nat, &nat, &lan_host, &ns)?;
        let base = 16 * n;
        let gateway = Ipv4Addr::new(203, 0, 113, base + 1);
        let ip = Ipv4Addr::new(203, 0, 113, base + 2);
        self.exec(
            &nat,
            &[
                "ip",
                "addr",
                "add",
                &format!("{gateway}/28"),
                "dev",
                &lan_nat,
            ],
        )?;
        self.exec(&nat, &["ip", "link", "set", &lan_nat, "up"])?;
        self.exec(&nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.exec(
            &nat,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ],
        )?;
        self.exec(&ns, &["ip", "link", "set", &lan_host, "name", "lan"])?;
        self.exec(
            &ns,
            &["ip", "addr", "add", &format!("{ip}/28"), "dev", "lan"],
        )?;
        self.exec(&ns, &["ip", "link", "set", "lan", "up"])?;
        self.exec(
            &ns,
            &["ip", "route", "add", "default", "via", &gateway.to_string()],
        )?;
        Ok(Host { ns, ip })
    }

    /// Every namespace of the lab, for rules that must hold on the whole path.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Starts a long-running process in `ns`, logging to `<name>.log` in the lab directory.
    pub fn spawn(&mut self, ns: &str, name: &str, program: &Path, args: &[&str]) -> Result<()> {
        let log = File::create(self.log_path(name))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} in {ns}", program.display()))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Whether a process started with [`Lab::spawn`] is still running.
    pub fn is_running(&mut self, name: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// The PID of a process started with [`Lab::spawn`] (`ip netns exec` execs in place).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Prints every process log; called when a test fails.
    pub fn dump_logs(&self) {
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("----- {name}.log (last {} lines)", tail.len());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Removes namespaces left by an earlier run that died before cleaning up.
fn remove_stale(prefix: &str) {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&format!("{prefix}-")) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        // UAPI sockets live on the shared file system, not in the namespaces.
        if let Ok(entries) = std::fs::read_dir("/var/run/wireguard") {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&self.prefix)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}
