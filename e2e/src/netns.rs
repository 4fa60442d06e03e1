//! A lab of network namespaces: an "internet" bridge, public hosts on it, and hosts behind their
//! own iptables MASQUERADE NAT. Everything is torn down on drop, also after a panic, and
//! leftovers of earlier runs that died before cleaning up are removed by the next [`Lab::new`].
//!
//! Addresses are documentation ranges and never leave the namespaces: the internet is
//! 198.51.100.0/24, each NAT's LAN a /28 of 203.0.113.0/24 (tunnels use 192.0.2.0/24).
//!
//! Nothing here knows about the relay or WireGuard: anything reachable at an address on the
//! internet segment (a relay host, a Kubernetes node plugged in with [`Lab::attach`]) can be the
//! peers' endpoint. Processes started in a namespace with [`Lab::spawn`] are the lab's and die
//! with it; the peers ([`crate::wg`]) and the relay ([`crate::relay`]) are such processes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use wpex_testkit::Children;

/// Starts every name a lab creates (namespaces, interfaces, UAPI sockets).
const TAG: &str = "wx";
/// Where wireguard-go and boringtun put their UAPI sockets: one directory for all namespaces.
pub(crate) const UAPI_DIR: &str = "/var/run/wireguard";

static LABS: AtomicU32 = AtomicU32::new(0);

/// Something worth printing when a test fails, computed at that moment.
type Diagnostic = Box<dyn Fn(&Lab) -> String + Send + Sync>;

/// A host: a network namespace with an address peers can reach it at (public or NATed).
#[derive(Debug, Clone)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Its own address: public for a public host, on the LAN for a NATed one.
    pub ip: Ipv4Addr,
    /// The namespace of its NAT, for a NATed host.
    pub nat: Option<String>,
}

/// The namespaces, links, NAT rules and processes of one test; all removed on drop.
pub struct Lab {
    /// `wx<pid>_<n>` in base 36: unique per process and lab, at most 10 characters, so
    /// interface names (prefix, one letter, up to 3 digits) stay within Linux's 15.
    pub prefix: String,
    inet: String,
    namespaces: Vec<String>,
    children: Children,
    dir: Option<tempfile::TempDir>,
    hosts: u8,
    nats: u8,
    passed: bool,
    /// Extra diagnostics printed with the logs on failure (the relay's metrics, for one).
    on_failure: Vec<Diagnostic>,
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

/// Runs a command inside namespace `ns`, failing with its stderr.
pub fn exec(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The PID of the process that made a name made by a [`Lab`], or `None` for other names.
fn pid_of(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(TAG)?.split_once('_')?;
    u32::from_str_radix(pid, 36).ok()
}

/// Whether a name was made by a lab that can no longer clean up after itself: its process is
/// gone, or it carries `mine`, a prefix this process has not used yet (so an old run's, whose
/// PID we now have). Names of other live labs, in this process or another, are left alone.
fn is_stale(name: &str, mine: &str) -> bool {
    if let Some(rest) = name.strip_prefix(mine) {
        let rest = rest.strip_suffix(".sock").unwrap_or(rest);
        // Namespaces are `<prefix>-<name>`, interfaces `<prefix><letter><digits>`.
        let interface = rest.len() > 1
            && rest.starts_with(['b', 't', 'n', 'h', 'w'])
            && rest[1..].bytes().all(|b| b.is_ascii_digit());
        if rest.starts_with('-') || interface {
            return true;
        }
    }
    pid_of(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Kills whatever still runs in a namespace (processes outlive `ip netns del`).
fn kill_all_in(ns: &str) {
    let Ok(pids) = run("ip", &["netns", "pids", ns]) else {
        return;
    };
    for pid in pids.split_whitespace() {
        let _ = run("kill", &["-KILL", pid]);
    }
}

/// Removes namespaces, stray veths and UAPI sockets left by labs whose process died.
fn remove_stale(mine: &str) {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if is_stale(ns, mine) {
                eprintln!("netns: removing stale namespace {ns}");
                kill_all_in(ns);
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
    // A veth pair is made in the root namespace and then moved: a crash in between leaves it.
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for link in links.lines() {
            let Some(name) = link.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if is_stale(name, mine) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(UAPI_DIR) {
        for entry in entries.flatten() {
            if is_stale(&entry.file_name().to_string_lossy(), mine) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Lab {
    /// An empty internet; fails unless root. Removes what earlier, dead runs left behind.
    pub fn new() -> Result<Self> {
        if run("id", &["-u"])?.trim() != "0" {
            bail!("network namespaces need root: run the e2e tests as root");
        }
        let prefix = format!(
            "{TAG}{}_{}",
            base36(std::process::id()),
            base36(LABS.fetch_add(1, Ordering::Relaxed))
        );
        remove_stale(&prefix);
        let inet = format!("{prefix}-inet");
        let dir = tempfile::tempdir()?;
        let mut lab = Self {
            prefix,
            inet: inet.clone(),
            namespaces: Vec::new(),
            children: Children::new(dir.path()),
            dir: Some(dir),
            hosts: 0,
            nats: 0,
            passed: false,
            on_failure: Vec::new(),
        };
        lab.add_ns(&inet)?;
        lab.exec(&inet, &["ip", "link", "add", "br0", "type", "bridge"])?;
        lab.exec(&inet, &["ip", "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// The lab's scratch directory: process logs, key files. Kept after a failed test.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/tmp"), |d| d.path())
    }

    /// Marks the test as passed: from now on, dropping the lab stays quiet and removes its
    /// directory. A lab dropped without this (an error returned, a panic) prints every
    /// process's log and keeps the directory.
    pub fn pass(&mut self) {
        self.passed = true;
    }

    /// Adds a diagnostic to print, with the process logs, if the test fails.
    pub fn on_failure(&mut self, f: impl Fn(&Lab) -> String + Send + Sync + 'static) {
        self.on_failure.push(Box::new(f));
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        run("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        self.exec(ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        exec(ns, args)
    }

    /// A veth pair with `a` in namespace `ns_a` and `b` in `ns_b`, both with MTU 1500.
    fn veth(&self, a: &str, ns_a: &str, b: &str, ns_b: &str) -> Result<()> {
        run("ip", &["link", "add", a, "type", "veth", "peer", "name", b])?;
        run("ip", &["link", "set", a, "mtu", "1500", "netns", ns_a])?;
        run("ip", &["link", "set", b, "mtu", "1500", "netns", ns_b])?;
        Ok(())
    }

    /// A new port on the internet bridge: a veth pair whose bridge end is in the internet
    /// namespace, on br0 and up. Returns the other end, still in this machine's own namespace.
    /// Both ends have MTU 1500.
    fn bridge_port(&mut self) -> Result<String> {
        self.hosts += 1;
        let bridge_side = format!("{}b{}", self.prefix, self.hosts);
        let other = format!("{}t{}", self.prefix, self.hosts);
        run(
            "ip",
            &[
                "link",
                "add",
                &bridge_side,
                "type",
                "veth",
                "peer",
                "name",
                &other,
            ],
        )?;
        run(
            "ip",
            &[
                "link",
                "set",
                &bridge_side,
                "mtu",
                "1500",
                "netns",
                &self.inet,
            ],
        )?;
        run("ip", &["link", "set", &other, "mtu", "1500"])?;
        self.exec(
            &self.inet,
            &["ip", "link", "set", &bridge_side, "master", "br0", "up"],
        )?;
        Ok(other)
    }

    /// Plugs namespace `ns` into the internet bridge as `ifname` with address `ip`.
    fn attach_to_internet(&mut self, ns: &str, ifname: &str, ip: Ipv4Addr) -> Result<()> {
        let port = self.bridge_port()?;
        run("ip", &["link", "set", &port, "netns", ns])?;
        self.exec(ns, &["ip", "link", "set", &port, "name", ifname])?;
        self.exec(
            ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", ifname],
        )?;
        self.exec(ns, &["ip", "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A host directly on the internet at 198.51.100.`last` (1..=99; the NATs use 101 up).
    pub fn public_host(&mut self, name: &str, last: u8) -> Result<Host> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns)?;
        let ip = Ipv4Addr::new(198, 51, 100, last);
        self.attach_to_internet(&ns, "wan", ip)?;
        Ok(Host { ns, ip, nat: None })
    }

    /// Plugs a namespace made by someone else (a Kubernetes node, say) into the internet as
    /// interface `wan` at 198.51.100.`last`, and sets its loopback up. The lab removes its
    /// link, not the namespace.
    pub fn attach(&mut self, ns: &str, last: u8) -> Result<Host> {
        self.exec(ns, &["ip", "link", "set", "lo", "up"])?;
        let ip = Ipv4Addr::new(198, 51, 100, last);
        self.attach_to_internet(ns, "wan", ip)?;
        Ok(Host {
            ns: ns.to_owned(),
            ip,
            nat: None,
        })
    }

    /// Plugs this machine's own network namespace (where a local Kubernetes node runs) into the
    /// internet at 198.51.100.`last`. Returns the interface, which keeps its lab name so that it
    /// goes away with the lab's bridge, or with the stale-lab cleanup after a crash. Never made
    /// a named namespace: the lab kills every process in its namespaces when it is dropped.
    pub fn attach_root(&mut self, last: u8) -> Result<(String, Ipv4Addr)> {
        let port = self.bridge_port()?;
        let ip = Ipv4Addr::new(198, 51, 100, last);
        run("ip", &["addr", "add", &format!("{ip}/24"), "dev", &port])?;
        run("ip", &["link", "set", &port, "up"])?;
        Ok((port, ip))
    }

    /// A host on the LAN of its own NAT. The NAT's public address is 198.51.100.(100 + n).
    pub fn natted_host(&mut self, name: &str) -> Result<Host> {
        self.nats += 1;
        let n = self.nats;
        if n > 14 {
            bail!("at most 14 NATs per lab: each takes a /28 of 203.0.113.0/24");
        }
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
        self.masquerade(&nat, None)?;
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
        Ok(Host {
            ns,
            ip,
            nat: Some(nat),
        })
    }

    /// The namespace holding the internet bridge `br0`: every packet between hosts crosses it,
    /// so it is where an on-path observer sits.
    pub fn internet_ns(&self) -> &str {
        &self.inet
    }

    /// Source NAT out of the WAN side of `nat`: UDP to `udp_ports` if given, anything else to
    /// whatever port the kernel picks.
    fn masquerade(&self, nat: &str, udp_ports: Option<&str>) -> Result<()> {
        let mut rule = vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan"];
        if let Some(ports) = udp_ports {
            rule.extend(["-p", "udp", "-j", "MASQUERADE", "--to-ports", ports]);
        } else {
            rule.extend(["-j", "MASQUERADE"]);
        }
        self.exec(nat, &rule)?;
        Ok(())
    }

    /// Makes `host`'s NAT map UDP to public source ports in `ports` (`"40000-40100"`), or to
    /// whatever port the kernel picks with `None`, and forgets every existing mapping, as a
    /// NAT does when it reboots or its uplink changes: the next packet out gets a new port.
    pub fn set_nat_ports(&self, host: &Host, ports: Option<&str>) -> Result<()> {
        let nat = host.nat.as_deref().context("not a NATed host")?;
        self.exec(nat, &["iptables", "-t", "nat", "-F", "POSTROUTING"])?;
        if let Some(ports) = ports {
            self.masquerade(nat, Some(ports))?;
        }
        self.masquerade(nat, None)?;
        self.exec(nat, &["conntrack", "-F"])?;
        Ok(())
    }

    /// The public UDP ports `host`'s NAT currently maps it to (one per live mapping).
    pub fn nat_public_ports(&self, host: &Host) -> Result<Vec<u16>> {
        let nat = host.nat.as_deref().context("not a NATed host")?;
        let src = host.ip.to_string();
        let list = self.exec(nat, &["conntrack", "-L", "-p", "udp", "--orig-src", &src])?;
        // The reply tuple comes second: its dport is the public port.
        Ok(list
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .filter_map(|f| f.strip_prefix("dport="))
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .collect())
    }

    /// Every namespace the lab made, for rules that must hold on the whole path.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The MTU of interface `ifname` in namespace `ns`.
    pub fn mtu(&self, ns: &str, ifname: &str) -> Result<u32> {
        let text = self.exec(ns, &["cat", &format!("/sys/class/net/{ifname}/mtu")])?;
        text.trim()
            .parse()
            .with_context(|| format!("MTU of {ifname} in {ns}: {text:?}"))
    }

    /// Starts a long-running process in `ns`, its stdout and stderr going to `<name>.log` in
    /// the lab directory (printed if the test fails).
    pub fn spawn(&mut self, ns: &str, name: &str, program: &Path, args: &[&str]) -> Result<()> {
        self.spawn_env(ns, name, program, args, &[])
    }

    /// [`Lab::spawn`] with extra environment variables.
    pub fn spawn_env(
        &mut self,
        ns: &str,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .envs(env.iter().copied());
        self.children
            .spawn(name, command)
            .with_context(|| format!("in {ns}"))?;
        Ok(())
    }

    /// Where the process `name`'s output goes.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.children.log_path(name)
    }

    /// Whether a process started with [`Lab::spawn`] is still running.
    pub fn is_running(&self, name: &str) -> bool {
        self.children.is_running(name)
    }

    /// The PID of a process started with [`Lab::spawn`] (`ip netns exec` execs in place).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children.pid(name)
    }

    /// Prints every process log and the failure diagnostics to stderr.
    pub fn dump_logs(&self) {
        self.children.print_logs(60);
        for f in &self.on_failure {
            eprintln!("{}", f(self));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.passed || std::thread::panicking() {
            eprintln!("===== lab {} failed: logs follow", self.prefix);
            self.dump_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!("===== lab files kept in {}", dir.keep().display());
            }
        }
        self.children.kill_all();
        for ns in self.namespaces.iter().rev() {
            kill_all_in(ns);
            let _ = run("ip", &["netns", "del", ns]);
        }
        // UAPI sockets live on the shared file system, not in the namespaces.
        if let Ok(entries) = std::fs::read_dir(UAPI_DIR) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid_of_their_lab() {
        let prefix = format!("{TAG}{}_{}", base36(4_194_304), base36(35));
        assert_eq!(prefix, "wx2hwcg_z");
        assert!(prefix.len() <= 10, "room for a letter and 3 digits");
        assert_eq!(pid_of("wx2hwcg_z-relay"), Some(4_194_304));
        assert_eq!(pid_of("wx2hwcg_zw254.sock"), Some(4_194_304));
        assert_eq!(pid_of("wxyz"), None);
        assert_eq!(pid_of("other_1"), None);
    }

    #[test]
    fn only_dead_or_reused_prefixes_are_stale() {
        let me = base36(std::process::id());
        let mine = format!("{TAG}{me}_1");
        for reused in ["-relay", "-nat2", "w3", "w3.sock", "b12"] {
            assert!(is_stale(&format!("{mine}{reused}"), &mine), "{reused}");
        }
        // Lab `1b` of this process is alive, and so are its names.
        for other in ["b-inet", "bw3", "bw3.sock", "bt1", "b"] {
            assert!(!is_stale(&format!("{mine}{other}"), &mine), "{other}");
        }
        // PIDs never reach u32::MAX / 2 on Linux (pid_max <= 2^22).
        let dead = format!("{TAG}{}_0-inet", base36(u32::MAX / 2));
        assert!(is_stale(&dead, "wx0_0"));
        assert!(!is_stale("unrelated", "wx0_0"));
    }
}
