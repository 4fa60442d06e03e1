//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager,
//! built from the Go module proxy by `e2e/k8s/install-k8s.sh`, on 127.0.0.1 (or, under a real
//! node, on the node's address: pods reach the API server through the `kubernetes` Service).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use wpex_testkit::{Children, binary_in, eventually, free_port, print_tail};

const VERSIONS: &str = include_str!("../k8s/versions.env");

/// A version pinned in `e2e/k8s/versions.env`.
pub fn pinned(variable: &str) -> &'static str {
    crate::tools::pinned_in(VERSIONS, variable)
}

/// A Kubernetes binary (`etcd`, `kubelet`, ...) where install-k8s.sh puts them;
/// `WPEX_K8S_BIN` names another directory.
pub fn k8s_binary(name: &str) -> Result<PathBuf> {
    binary_in(
        "WPEX_K8S_BIN",
        crate::tools::cache_dir().join(format!("k8s-{}/bin", pinned("K8S_VERSION"))),
        name,
        "run e2e/k8s/install-k8s.sh",
    )
}

/// etcd, kube-apiserver and kube-controller-manager on this machine, with their own PKI, in a
/// temporary directory; stopped on drop.
pub struct ControlPlane {
    // Before `dir`: the components stop before their directory goes.
    children: Children,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    client: Client,
}

/// Where etcd listens for clients and for peers (there are none, but it needs the flag).
struct EtcdUrls {
    client: String,
    peer: String,
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
        for component in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            k8s_binary(component)?;
        }
        let dir = tempfile::tempdir()?;
        let pki = make_pki(dir.path(), address)?;
        let api = SocketAddr::new(address, free_port()?);
        let server = format!("https://{api}");
        let kubeconfig = write(dir.path(), "kubeconfig", &kubeconfig_text(&server, &pki)?)?;
        let mut cp = Self {
            children: Children::new(dir.path()),
            client: Client::try_from(Config::new("http://127.0.0.1:1".parse()?))?,
            dir,
            kubeconfig,
        };
        let etcd = cp.start_etcd()?;
        cp.start_apiserver(api, &etcd, &pki)?;
        cp.client = cp.wait_for_api().await?;
        cp.start_controller_manager(&pki)?;
        Ok(cp)
    }

    fn start_etcd(&mut self) -> Result<EtcdUrls> {
        let urls = EtcdUrls {
            client: format!("http://127.0.0.1:{}", free_port()?),
            peer: format!("http://127.0.0.1:{}", free_port()?),
        };
        let data = self.dir.path().join("etcd");
        self.spawn(
            "etcd",
            &k8s_binary("etcd")?,
            &[
                "--name=e2e".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={}", urls.client),
                format!("--advertise-client-urls={}", urls.client),
                format!("--listen-peer-urls={}", urls.peer),
                format!("--initial-advertise-peer-urls={}", urls.peer),
                format!("--initial-cluster=e2e={}", urls.peer),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        Ok(urls)
    }

    fn start_apiserver(&mut self, api: SocketAddr, etcd: &EtcdUrls, pki: &Pki) -> Result<()> {
        let address = api.ip();
        self.spawn(
            "kube-apiserver",
            &k8s_binary("kube-apiserver")?,
            &[
                format!("--etcd-servers={}", etcd.client),
                format!("--bind-address={address}"),
                format!("--advertise-address={address}"),
                format!("--secure-port={}", api.port()),
                format!("--tls-cert-file={}", path(&pki.serving.0)),
                format!("--tls-private-key-file={}", path(&pki.serving.1)),
                format!("--client-ca-file={}", path(&pki.ca)),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", path(&pki.sa.0)),
                format!("--service-account-signing-key-file={}", path(&pki.sa.1)),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
            ],
        )
    }

    fn start_controller_manager(&mut self, pki: &Pki) -> Result<()> {
        let kubeconfig = path(&self.kubeconfig);
        self.spawn(
            "kube-controller-manager",
            &k8s_binary("kube-controller-manager")?,
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--controllers=*".into(),
                "--secure-port=0".into(),
                format!("--service-account-private-key-file={}", path(&pki.sa.1)),
                format!("--root-ca-file={}", path(&pki.ca)),
            ],
        )
    }

    /// A client once the API server lists the default namespace; stops early if a component
    /// exits, and prints the logs on failure.
    async fn wait_for_api(&self) -> Result<Client> {
        let answered = eventually("the API server answers", Duration::from_secs(90))
            .every(Duration::from_millis(250))
            .until(|| async {
                self.children.ensure_running()?;
                let client = self.try_client().await?;
                Api::<Namespace>::all(client.clone()).get("default").await?;
                Ok(Some(client))
            })
            .await;
        if answered.is_err() {
            self.print_logs();
        }
        Ok(answered?.0)
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
        let mut command = Command::new(program);
        command.args(args);
        self.children.spawn(name, command)?;
        Ok(())
    }

    /// Stops one component started with [`ControlPlane::spawn`] (SIGTERM, then SIGKILL).
    pub fn stop(&mut self, name: &str) {
        self.children.stop(name);
    }

    /// Whether every component is still running.
    pub fn all_running(&self) -> bool {
        self.children.all_running()
    }

    /// The components, to ask whether they still run (e.g. in a check for `eventually`).
    pub fn children(&self) -> &Children {
        &self.children
    }

    /// A client with the admin's credentials.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig, for helm and kubectl.
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
                print_tail(&path, 30);
            }
        }
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
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
