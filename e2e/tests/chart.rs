//! The Helm chart: lint, render, values schema, and install/uninstall on a real API server.
//! Needs helm from `e2e/install-helm.sh` (and, for the install, the Kubernetes binaries).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use wpex_e2e::control_plane::{ControlPlane, pinned};
use wpex_e2e::tools::{chart, helm, run_tool};
use wpex_operator::crd::{WireGuardPeerKey, WireGuardRelay};

/// Runs helm, against `kubeconfig`'s cluster if given; returns (success, stdout + stderr).
fn run_helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<(bool, String)> {
    run_tool(&helm(), args, kubeconfig).context("install helm with e2e/install-helm.sh")
}

/// The shell commands of the NOTES that `helm install` printed: each `kubectl` line, with its
/// here-document when it has one.
fn notes_commands(helm_output: &str) -> Vec<String> {
    let notes = helm_output.split("NOTES:").nth(1).unwrap_or_default();
    let mut commands = Vec::new();
    let mut lines = notes.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        if !line.starts_with("kubectl ") {
            continue;
        }
        let mut command = line.to_owned();
        if line.ends_with("<<'YAML'") {
            for body in lines.by_ref() {
                command.push('\n');
                command.push_str(body);
                if body == "YAML" {
                    break;
                }
            }
        }
        commands.push(command);
    }
    commands
}

fn values_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

const WITH_RELAY: &str = "
relays:
  - name: edge
    spec:
      service: {type: NodePort, nodePort: 31820}
peerKeys:
  - name: alice
    relay: edge
    publicKey: HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=
  - name: bob
    relay: edge
    publicKey: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
    disabled: true
serviceMonitor: {enabled: true}
";

/// The `kind:` of every rendered document.
fn kinds(manifest: &str) -> Vec<String> {
    let mut kinds: Vec<String> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(|k| k.trim().to_owned())
        .collect();
    kinds.sort();
    kinds
}

#[test]
#[ignore = "needs helm from e2e/install-helm.sh"]
fn chart_lints_renders_and_validates_values() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let chart = chart();
    let chart = chart.to_str().context("utf-8 path")?;
    let with_relay = values_file(dir.path(), "relay.yaml", WITH_RELAY)?;
    let with_relay = with_relay.to_str().context("utf-8 path")?;

    let kube = pinned("K8S_VERSION");
    for args in [
        vec!["lint", chart, "--kube-version", kube],
        vec!["lint", chart, "-f", with_relay, "--kube-version", kube],
    ] {
        let (ok, out) = run_helm(&args, None)?;
        ensure!(ok, "helm {args:?} failed:\n{out}");
    }

    let (ok, plain) = run_helm(
        &[
            "template",
            "wpex",
            chart,
            "--namespace",
            "wpex-system",
            "--kube-version",
            kube,
        ],
        None,
    )?;
    ensure!(ok, "{plain}");
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ];
    ensure!(
        kinds(&plain) == expected,
        "default render: {:?}",
        kinds(&plain)
    );
    ensure!(plain.contains("--relay-image=wpex/wpex:0.1.0"), "{plain}");
    ensure!(plain.contains("image: wpex/wpex-operator:0.1.0"), "{plain}");
    for verb_rule in ["wireguardrelays/status", "leases", "nodes", "events.k8s.io"] {
        ensure!(plain.contains(verb_rule), "RBAC lacks {verb_rule}");
    }

    let (ok, full) = run_helm(
        &[
            "template",
            "wpex",
            chart,
            "-f",
            with_relay,
            "--kube-version",
            pinned("K8S_VERSION"),
        ],
        None,
    )?;
    ensure!(ok, "{full}");
    let k = kinds(&full);
    let count = |kind: &str| k.iter().filter(|x| *x == kind).count();
    ensure!(
        count("WireGuardRelay") == 1 && count("WireGuardPeerKey") == 2,
        "{k:?}"
    );
    ensure!(count("ServiceMonitor") == 1, "{k:?}");
    ensure!(
        full.contains("nodePort: 31820") && full.contains("disabled: true"),
        "{full}"
    );

    // More than one operator replica: spread over nodes, and kept through a drain.
    let (ok, ha) = run_helm(
        &[
            "template",
            "wpex",
            chart,
            "--set",
            "replicaCount=2",
            "--kube-version",
            kube,
        ],
        None,
    )?;
    ensure!(ok, "{ha}");
    ensure!(
        kinds(&ha).contains(&"PodDisruptionBudget".to_owned())
            && ha.contains("replicas: 2")
            && ha.contains("podAntiAffinity")
            && ha.contains("minAvailable: 1"),
        "replicaCount=2:\n{ha}"
    );
    ensure!(
        !plain.contains("podAntiAffinity") && plain.contains("replicas: 1"),
        "one replica needs neither: {plain}"
    );

    // The values schema refuses a malformed key before anything reaches the cluster.
    let bad = values_file(
        dir.path(),
        "bad.yaml",
        "peerKeys: [{name: x, relay: edge, publicKey: AAAA}]\n",
    )?;
    let (ok, out) = run_helm(
        &[
            "template",
            "wpex",
            chart,
            "-f",
            bad.to_str().context("utf-8")?,
            "--kube-version",
            kube,
        ],
        None,
    )?;
    ensure!(!ok, "a bad publicKey rendered:\n{out}");
    ensure!(
        out.contains("publicKey"),
        "the error names the field:\n{out}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs helm from e2e/install-helm.sh and the Kubernetes binaries"]
async fn helm_install_and_uninstall_on_a_real_api_server() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let kubeconfig = cp.kubeconfig_path().to_owned();
    let on_cluster = Some(kubeconfig.as_path());
    let chart = chart();
    let chart = chart.to_str().context("utf-8 path")?;
    let (ok, out) = run_helm(
        &[
            "install",
            "wpex",
            chart,
            "--namespace",
            "wpex-system",
            "--create-namespace",
        ],
        on_cluster,
    )?;
    if !ok {
        cp.print_logs();
        bail!("helm install failed:\n{out}");
    }
    ensure!(
        out.contains("kubectl get wgr"),
        "NOTES.txt is shown:\n{out}"
    );

    let client = cp.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["wireguardrelays.wpex.io", "wireguardpeerkeys.wpex.io"] {
        crds.get(name)
            .await
            .with_context(|| format!("CRD {name} installed"))?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "wpex-system");
    deployments
        .get("wpex-operator")
        .await
        .context("operator Deployment")?;

    // The NOTES commands work as pasted (with a real key for the placeholder).
    let commands = notes_commands(&out);
    ensure!(commands.len() == 4, "4 commands in NOTES:\n{out}");
    let (_, key) = wpex_e2e::wg::keypair()?;
    for command in commands {
        let command = command.replace("<base64 public key>", &key);
        let path = format!(
            "{}:{}",
            wpex_e2e::control_plane::bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &command])
            .env("KUBECONFIG", &kubeconfig)
            .env("PATH", path)
            .output()?;
        ensure!(
            out.status.success(),
            "NOTES command failed:\n{command}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let relays: Api<WireGuardRelay> = Api::namespaced(client.clone(), "wpex-system");
    relays.get("edge").await.context("the NOTES relay")?;
    let keys: Api<WireGuardPeerKey> = Api::namespaced(client.clone(), "wpex-system");
    let alice = keys.get("alice-laptop").await.context("the NOTES key")?;
    ensure!(alice.spec.public_key == key, "the NOTES key holds our key");

    let (ok, out) = run_helm(
        &["uninstall", "wpex", "--namespace", "wpex-system", "--wait"],
        on_cluster,
    )?;
    ensure!(ok, "helm uninstall failed:\n{out}");
    ensure!(
        deployments.get_opt("wpex-operator").await?.is_none(),
        "the operator Deployment is gone"
    );
    let (_, list) = run_helm(&["list", "--all-namespaces", "--short"], on_cluster)?;
    ensure!(list.trim().is_empty(), "no release left: {list}");
    Ok(())
}
