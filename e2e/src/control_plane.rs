//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager,
//! built from the Go module proxy by `e2e/k8s/install-k8s.sh`, on 127.0.0.1 (or, under a real
//! node, on the node's address: pods reach the API server through the `kubernetes` Service).

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const VERSIONS: &str = include_str!("../k8s/versions.env");

/// A version pinned in `e2e/k8s/versions.env`.
pub fn pinned(variable: &str) -> &'static str {
    crate::tools::pinned_in(VERSIONS, variable)
}

/// Where install-k8s.sh puts the binaries; `WPEX_K8S_BIN` overrides.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("WPEX_K8S_BIN").map_or_else(
        || PathBuf::from(format!("/var/cache/wpex/k8s-{}/bin", pinned("K8S_VERSION"))),
        PathBuf::from,
    )
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct ControlPlane {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    kubeconfig: PathBuf,
    client: Client,
}

/// Files of a small PKI: a CA, the API server's serving certificate, an admin client
/// certificate and the service-account signing key.
struct Pki {
    ca: PathBuf,
    serving: (PathBuf, PathBuf),
    admin: (PathBuf, PathBuf),
    sa: (PathBuf, PathBuf),
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn make_pki(dir: &Path, address: IpAddr) -> Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wpex-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut serving = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        address.to_string(),
        "10.96.0.1".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "wpex-e2e-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &ca)?;

    let sa = KeyPair::generate()?;
    Ok(Pki {
        ca: write(dir, "ca.crt", &ca.pem())?,
        serving: (
            write(dir, "apiserver.crt", &serving_cert.pem())?,
            write(dir, "apiserver.key", &serving_key.serialize_pem())?,
        ),
        admin: (
            write(dir, "admin.crt", &admin_cert.pem())?,
            write(dir, "admin.key", &admin_key.serialize_pem())?,
        ),
        sa: (
            write(dir, "sa.pub", &sa.public_key_pem())?,
            write(dir, "sa.key", &sa.serialize_pem())?,
        ),
    })
}

fn kubeconfig_text(server: &str, pki: &Pki) -> Result<String> {
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    Ok(format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: e2e
  context: {{cluster: e2e, user: admin}}
current-context: e2e
",
        ca = path(&pki.ca),
        cert = path(&pki.admin.0),
        key = path(&pki.admin.1),
    ))
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 and waits until the
    /// API answers.
    pub async fn start() -> Result<Self> {
        Self::start_at(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// As [`ControlPlane::start`], with the API server serving and advertised on `address`.
    pub async fn start_at(address: IpAddr) -> Result<Self> {
        let bin = bin_dir();
        for component in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            if !bin.join(component).exists() {
                bail!(
                    "{} is missing; run e2e/k8s/install-k8s.sh",
                    bin.join(component).display()
                );
            }
        }
        let dir = tempfile::tempdir()?;
        let pki = make_pki(dir.path(), address)?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let server = format!("https://{}", std::net::SocketAddr::new(address, api_port));
        let kubeconfig = write(dir.path(), "kubeconfig", &kubeconfig_text(&server, &pki)?)?;
        let mut cp = Self {
            client: Client::try_from(Config::new("http://127.0.0.1:1".parse()?))?,
            dir,
            children: Vec::new(),
            kubeconfig,
        };
        let p = |p: &PathBuf| p.to_string_lossy().into_owned();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data = cp.dir.path().join("etcd");
        cp.spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                "--name=e2e".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=e2e={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        cp.spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={address}"),
                format!("--advertise-address={address}"),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", p(&pki.serving.0)),
                format!("--tls-private-key-file={}", p(&pki.serving.1)),
                format!("--client-ca-file={}", p(&pki.ca)),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", p(&pki.sa.0)),
                format!("--service-account-signing-key-file={}", p(&pki.sa.1)),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
            ],
        )?;
        cp.client = cp.wait_for_api().await?;
        let kubeconfig = p(&cp.kubeconfig);
        cp.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--controllers=*".into(),
                "--secure-port=0".into(),
                format!("--service-account-private-key-file={}", p(&pki.sa.1)),
                format!("--root-ca-file={}", p(&pki.ca)),
            ],
        )?;
        Ok(cp)
    }

    async fn wait_for_api(&mut self) -> Result<Client> {
        let start = Instant::now();
        let bound = Duration::from_secs(90);
        loop {
            if let Ok(client) = self.try_client().await {
                let namespaces: Api<Namespace> = Api::all(client.clone());
                if namespaces.get("default").await.is_ok() {
                    return Ok(client);
                }
            }
            if start.elapsed() > bound || !self.all_running() {
                self.print_logs();
                bail!("the API server did not come up within {bound:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn try_client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Starts a long-running component, its output going to `<name>.log` in the log directory.
    /// It is killed when the control plane is dropped, or when the test process dies.
    pub fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let log = File::create(self.log_dir().join(format!("{name}.log")))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // If the test process dies without running Drop, the components die with it.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// Stops one component started with [`ControlPlane::spawn`] (SIGTERM, then SIGKILL).
    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether every component is still running.
    pub fn all_running(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where component logs go; tests may put their own processes' logs here too.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Prints the last lines of every log in [`ControlPlane::log_dir`].
    pub fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.log_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("----- {} (last {} lines)", path.display(), tail.len());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `body` in a fresh namespace and deletes the namespace afterwards, pass or fail.
pub async fn with_temp_ns<F, Fut>(client: &Client, body: F) -> Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = format!(
        "e2e-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or_default()
    );
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &ns).await?;
    let result = body(name.clone()).await;
    if let Err(e) = &result {
        eprintln!("test in namespace {name} failed: {e:?}");
    }
    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
    result.with_context(|| format!("in namespace {name}"))
}
