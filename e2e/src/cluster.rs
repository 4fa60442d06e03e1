//! A real single-node Kubernetes cluster on this machine, with no Docker: the control plane of
//! [`ControlPlane`] plus kube-scheduler, Debian's containerd and runc, the CNI plugins from
//! Debian's containernetworking-plugins, kubelet and kube-proxy.
//!
//! The node runs in the machine's own network namespace, at an address the caller chose (in the
//! e2e, one plugged into a [`crate::netns::Lab`] internet), so peers outside the cluster reach
//! NodePorts there and pods reach the API server through the `kubernetes` Service. Everything it
//! writes is under [`STATE_DIR`]; a run that died without cleaning up is swept by the next one.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use wpex_testkit::eventually;

use crate::control_plane::{ControlPlane, k8s_binary};
use crate::netns::run;
use crate::tools::{kubectl, run_tool};

/// The node's name.
pub const NODE_NAME: &str = "wpex-e2e-node";
/// containerd's state, kubelet's root, CNI configuration and IPAM state, pod logs.
pub const STATE_DIR: &str = "/run/wpex-e2e";
/// The sandbox ("pause") image; `e2e/build-images.sh` builds it from a few lines of C.
pub const PAUSE_IMAGE: &str = "localhost/wpex-e2e/pause:1";
const POD_CIDR: &str = "10.244.0.0/24";
const CNI_BRIDGE: &str = "wpexcni0";
const CNI_NETWORK: &str = "wpex-e2e";
const CNI_BIN_DIR: &str = "/usr/lib/cni";
const CONTAINERD: &str = "/usr/bin/containerd";

/// A single-node cluster on this machine: the control plane plus scheduler, containerd, kubelet
/// and kube-proxy, torn down (with everything it started on the host) on drop.
pub struct LocalCluster {
    cp: ControlPlane,
    node_ip: Ipv4Addr,
}

fn state(path: &str) -> PathBuf {
    Path::new(STATE_DIR).join(path)
}

/// A path under [`STATE_DIR`], as a command-line argument.
fn state_arg(path: &str) -> String {
    state(path).display().to_string()
}

fn containerd_socket() -> PathBuf {
    state("containerd.sock")
}

/// `ctr` against our containerd, in the namespace CRI uses.
fn ctr(args: &[&str]) -> Result<String> {
    let socket = containerd_socket();
    let mut all = vec![
        "--address",
        socket.to_str().context("utf-8 path")?,
        "-n",
        "k8s.io",
    ];
    all.extend_from_slice(args);
    run("ctr", &all)
}

fn require(path: &Path, hint: &str) -> Result<()> {
    if !path.exists() {
        bail!("{} is missing: {hint}", path.display());
    }
    Ok(())
}

fn containerd_config() -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The VM lacks CAP_SYS_RESOURCE: without this, runc fails to lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
"#,
        root = state("containerd/root").display(),
        state = state("containerd/state").display(),
        socket = containerd_socket().display(),
        cni = state("cni/conf").display(),
    )
}

fn cni_config() -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "{CNI_NETWORK}", "plugins": [
  {{"type": "bridge", "bridge": "{CNI_BRIDGE}", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {{"type": "host-local", "dataDir": "{data}", "ranges": [[{{"subnet": "{POD_CIDR}"}}]],
             "routes": [{{"dst": "0.0.0.0/0"}}]}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
  {{"type": "loopback"}}
]}}
"#,
        data = state("cni/ipam").display(),
    )
}

fn kubelet_config() -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
# cgroup v1, PID 1 is not systemd, swap may be on: settings for this VM, not for production.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: {logs}
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
# A shared disk may be fuller than kubelet's defaults like; never evict or GC test images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
resolvConf: ""
"#,
        socket = containerd_socket().display(),
        logs = state("pod-logs").display(),
    )
}

impl LocalCluster {
    /// Brings the cluster up with its node at `node_ip` (an address of this machine), imports
    /// the image tarballs `images` (plus the pause image from `images_dir`), and returns once
    /// the node is Ready and kube-proxy serves the `kubernetes` Service.
    pub async fn start(node_ip: Ipv4Addr, images_dir: &Path, images: &[&str]) -> Result<Self> {
        let tarballs = check_prerequisites(images_dir, images)?;
        prepare_host()?;
        let cp = ControlPlane::start_at(IpAddr::V4(node_ip)).await?;
        // From here on, a failure tears down what was started.
        let mut cluster = Self { cp, node_ip };
        cluster.start_scheduler()?;
        cluster.start_containerd(&tarballs).await?;
        cluster.start_kubelet()?;
        cluster.start_kube_proxy()?;
        cluster.wait_until_ready().await?;
        Ok(cluster)
    }

    /// `--kubeconfig=...` for a component. Every component uses the admin credential, a test
    /// cluster's shortcut; the operator still runs under its own ServiceAccount and the chart's
    /// RBAC.
    fn kubeconfig_flag(&self) -> String {
        format!("--kubeconfig={}", self.cp.kubeconfig_path().display())
    }

    fn start_scheduler(&mut self) -> Result<()> {
        let args = [
            self.kubeconfig_flag(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ];
        self.cp
            .spawn("kube-scheduler", &k8s_binary("kube-scheduler")?, &args)
    }

    /// Starts containerd and imports the image tarballs into it.
    async fn start_containerd(&mut self, tarballs: &[PathBuf]) -> Result<()> {
        self.cp.spawn(
            "containerd",
            Path::new(CONTAINERD),
            &[format!("--config={}", state_arg("containerd.toml"))],
        )?;
        self.wait_for("containerd answers", Duration::from_secs(30), || {
            std::future::ready(ctr(&["version"]).map(|_| Some(())))
        })
        .await?;
        for image in tarballs {
            ctr(&["images", "import", image.to_str().context("utf-8 path")?])
                .with_context(|| format!("importing {}", image.display()))?;
        }
        Ok(())
    }

    fn start_kubelet(&mut self) -> Result<()> {
        let args = [
            self.kubeconfig_flag(),
            format!("--config={}", state_arg("kubelet.yaml")),
            format!("--root-dir={}", state_arg("kubelet")),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={}", self.node_ip),
        ];
        self.cp.spawn("kubelet", &k8s_binary("kubelet")?, &args)
    }

    fn start_kube_proxy(&mut self) -> Result<()> {
        let args = [
            self.kubeconfig_flag(),
            format!("--hostname-override={NODE_NAME}"),
            "--proxy-mode=iptables".into(),
            "--cluster-cidr=10.244.0.0/16".into(),
            // Leave the host's conntrack table size alone.
            "--conntrack-max-per-core=0".into(),
        ];
        self.cp
            .spawn("kube-proxy", &k8s_binary("kube-proxy")?, &args)
    }

    /// Waits until the node is Ready and kube-proxy serves the `kubernetes` Service.
    async fn wait_until_ready(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client());
        self.wait_for("the node is Ready", Duration::from_secs(120), || async {
            let node = nodes.get_opt(NODE_NAME).await?;
            let ready = node
                .and_then(|n| n.status)
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(ready.then_some(()))
        })
        .await?;
        self.wait_for(
            "kube-proxy serves the kubernetes Service",
            Duration::from_secs(60),
            || {
                let rules = run("iptables", &["-t", "nat", "-S", "KUBE-SERVICES"]);
                std::future::ready(
                    rules.map(|r| r.contains("default/kubernetes:https").then_some(())),
                )
            },
        )
        .await
    }

    /// Polls `check` every 250 ms until it holds; fails, with the component logs, after `bound`
    /// or as soon as a component has exited.
    async fn wait_for<F, Fut>(&self, what: &str, bound: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<()>>>,
    {
        let waited = eventually(format!("local cluster: {what}"), bound)
            .every(Duration::from_millis(250))
            .until(|| {
                let look = check();
                async move {
                    self.cp.children().ensure_running()?;
                    look.await
                }
            })
            .await;
        if waited.is_err() {
            self.print_logs();
        }
        waited.map(drop)
    }

    /// A client of its API server.
    pub fn client(&self) -> Client {
        self.cp.client()
    }

    /// The kubeconfig for helm and kubectl.
    pub fn kubeconfig_path(&self) -> &Path {
        self.cp.kubeconfig_path()
    }

    /// The node's InternalIP, where NodePorts answer.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// Prints the tail of every component's log (kubelet, containerd, kube-proxy included).
    pub fn print_logs(&self) {
        self.cp.print_logs();
    }

    /// Removes every pod the way kubelet does (so CNI releases their addresses and rules), then
    /// stops kubelet and kube-proxy.
    fn drain(&mut self) {
        // No controller may recreate what is deleted here.
        self.cp.stop("kube-controller-manager");
        self.cp.stop("kube-scheduler");
        if let Ok(kubectl) = kubectl() {
            let _ = run_tool(
                &kubectl,
                &[
                    "delete",
                    "pods",
                    "--all",
                    "--all-namespaces",
                    "--force",
                    "--grace-period=0",
                    "--wait=false",
                ],
                Some(self.kubeconfig_path()),
            );
        }
        // Best effort: kubelet is stopped next either way.
        let _ = eventually("every container is gone", Duration::from_secs(60))
            .every(Duration::from_millis(250))
            .until_blocking(|| {
                let running = ctr(&["tasks", "ls", "-q"]).is_ok_and(|t| !t.trim().is_empty());
                Ok((!running).then_some(()))
            });
        self.cp.stop("kubelet");
        self.cp.stop("kube-proxy");
    }
}

/// Fails, saying which installer to run, if a binary, tool or image is missing; returns the
/// image tarballs to import, the pause image first.
fn check_prerequisites(images_dir: &Path, images: &[&str]) -> Result<Vec<PathBuf>> {
    for component in ["kube-scheduler", "kubelet", "kube-proxy"] {
        k8s_binary(component)?;
    }
    kubectl()?;
    for tool in [CONTAINERD, "/usr/sbin/runc", "/usr/bin/ctr"] {
        require(Path::new(tool), "run e2e/install-deps.sh")?;
    }
    require(
        &Path::new(CNI_BIN_DIR).join("bridge"),
        "run e2e/install-deps.sh",
    )?;
    let tarballs: Vec<PathBuf> = std::iter::once("pause.tar")
        .chain(images.iter().copied())
        .map(|image| images_dir.join(image))
        .collect();
    for tarball in &tarballs {
        require(tarball, "run e2e/build-images.sh")?;
    }
    Ok(tarballs)
}

/// Sweeps what an earlier run left and writes the configuration of containerd, CNI and kubelet.
fn prepare_host() -> Result<()> {
    // The sweep kills whatever runs in kubelet's cgroups and flushes kube-proxy's rules:
    // never on a machine that is a node of some other cluster.
    if let Some(other) = foreign_kubelet() {
        bail!(
            "a kubelet not ours is running ({other}); the local cluster needs a machine \
             that is not already a Kubernetes node"
        );
    }
    sweep();
    for dir in ["cni/conf", "cni/ipam", "kubelet", "pod-logs", "containerd"] {
        std::fs::create_dir_all(state(dir))?;
    }
    std::fs::write(state("cni/conf/10-wpex-e2e.conflist"), cni_config())?;
    std::fs::write(state("containerd.toml"), containerd_config())?;
    std::fs::write(state("kubelet.yaml"), kubelet_config())?;
    // Pods' traffic to the API server and NodePort traffic to pods are routed by this host.
    run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.drain();
        self.cp.stop("containerd");
        sweep();
    }
}

/// The command line of a running kubelet that a [`LocalCluster`] did not start, if any.
fn foreign_kubelet() -> Option<String> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_kubelet = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "kubelet"));
        (is_kubelet && !args.iter().any(|a| a.contains(STATE_DIR))).then(|| args.join(" "))
    })
}

/// Removes whatever a local cluster left behind: containers and their shims, mounts, the CNI
/// bridge, kube-proxy's rules, the state directory. Safe to run when nothing is left.
fn sweep() {
    // Containers outlive containerd and their shims: kill everything in kubelet's cgroups.
    for controller in ["pids", "memory"] {
        let root = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("kubepods");
        kill_cgroup_tree(&root);
    }
    let socket = containerd_socket();
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &format!("containerd --config={STATE_DIR}/")])
        .status();
    let _ = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("containerd-shim.* -address {}", socket.display()),
        ])
        .status();
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(STATE_DIR))
            .collect();
        // Deepest first.
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in ours {
            let _ = run("umount", &["-l", mount]);
        }
    }
    // Network namespaces of pods that were never torn down by CNI.
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with("cni-")
                && run("ip", &["netns", "pids", ns]).is_ok_and(|p| p.trim().is_empty())
            {
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
    let _ = run("ip", &["link", "del", CNI_BRIDGE]);
    if let Ok(kube_proxy) = k8s_binary("kube-proxy") {
        let _ = Command::new(kube_proxy).arg("--cleanup").output();
    }
    remove_cni_masquerade_rules();
    remove_kubelet_chains();
    let _ = std::fs::remove_dir_all(STATE_DIR);
}

/// kubelet's own chains, which `kube-proxy --cleanup` leaves: a canary in each table, and a
/// firewall chain that drops non-local traffic to 127.0.0.0/8.
fn remove_kubelet_chains() {
    for iptables in ["iptables", "ip6tables"] {
        for hook in ["INPUT", "OUTPUT"] {
            while run(iptables, &["-D", hook, "-j", "KUBE-FIREWALL"]).is_ok() {}
        }
        for (table, chain) in [
            ("filter", "KUBE-FIREWALL"),
            ("filter", "KUBE-KUBELET-CANARY"),
            ("nat", "KUBE-KUBELET-CANARY"),
            ("mangle", "KUBE-KUBELET-CANARY"),
            ("mangle", "KUBE-IPTABLES-HINT"),
        ] {
            let _ = run(iptables, &["-t", table, "-F", chain]);
            let _ = run(iptables, &["-t", table, "-X", chain]);
        }
    }
}

fn kill_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_cgroup_tree(&entry.path());
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) with a PID read from a cgroup kubelet made for pods.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The bridge plugin's ipMasq rules of pods that were killed rather than torn down.
fn remove_cni_masquerade_rules() {
    let Ok(rules) = run("iptables", &["-t", "nat", "-S", "POSTROUTING"]) else {
        return;
    };
    let tag = format!("name: \\\"{CNI_NETWORK}\\\"");
    for rule in rules.lines().filter(|r| r.contains(&tag)) {
        let Some(spec) = rule.strip_prefix("-A POSTROUTING ") else {
            continue;
        };
        let chain = spec
            .split_whitespace()
            .skip_while(|w| *w != "-j")
            .nth(1)
            .map(str::to_owned);
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("iptables -t nat -D POSTROUTING {spec}"))
            .status();
        if let Some(chain) = chain.filter(|c| c.starts_with("CNI-")) {
            let _ = run("iptables", &["-t", "nat", "-F", &chain]);
            let _ = run("iptables", &["-t", "nat", "-X", &chain]);
        }
    }
}

/// The cluster an end-to-end test runs against, chosen by `WPEX_E2E_CLUSTER`:
/// - `local` (the default): a [`LocalCluster`] brought up for the test and torn down after it;
/// - `current`: the cluster of the current kubeconfig, e.g. kind from `e2e/kind/run.sh`, with
///   the images already loaded.
pub enum Cluster {
    /// The one this process brought up.
    Local(LocalCluster),
    /// The current kubeconfig's.
    Current(Client),
}

impl Cluster {
    /// `node_ip` is this machine's address on the test's network, where a local node runs.
    pub async fn from_env(node_ip: Ipv4Addr) -> Result<Self> {
        match std::env::var("WPEX_E2E_CLUSTER").as_deref() {
            Ok("local") | Err(_) => {
                let images = std::env::var_os("WPEX_IMAGES").map_or_else(
                    || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"),
                    PathBuf::from,
                );
                let cluster =
                    LocalCluster::start(node_ip, &images, &["wpex.tar", "wpex-operator.tar"])
                        .await?;
                Ok(Self::Local(cluster))
            }
            Ok("current") => {
                Ok(Self::Current(Client::try_default().await.context(
                    "no usable kubeconfig for WPEX_E2E_CLUSTER=current",
                )?))
            }
            Ok(other) => bail!("WPEX_E2E_CLUSTER={other}: expected local or current"),
        }
    }

    /// A client of its API server.
    pub fn client(&self) -> Client {
        match self {
            Self::Local(c) => c.client(),
            Self::Current(c) => c.clone(),
        }
    }

    /// The kubeconfig for helm and kubectl; `None` means their default.
    pub fn kubeconfig(&self) -> Option<&Path> {
        match self {
            Self::Local(c) => Some(c.kubeconfig_path()),
            Self::Current(_) => None,
        }
    }

    /// Whether status endpoints name this machine's address (a local node) rather than a node
    /// behind port mappings (kind).
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    /// The component logs, for a failed test (the local cluster only).
    pub fn print_logs(&self) {
        if let Self::Local(c) = self {
            c.print_logs();
        }
    }
}
