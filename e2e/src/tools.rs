//! The command-line tools the e2e tests drive: helm (from `e2e/install-helm.sh`) and kubectl
//! (built with the cluster by `e2e/k8s/install-k8s.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use wpex_testkit::binary;

use crate::control_plane::k8s_binary;

const HELM_INSTALLER: &str = include_str!("../install-helm.sh");

/// Where the installers cache what they build: `WPEX_CACHE`, by default `/var/cache/wpex` (the
/// cold rehearsal, `e2e/test-all.sh --cold`, points it at an empty directory).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WPEX_CACHE").map_or_else(|| PathBuf::from("/var/cache/wpex"), PathBuf::from)
}

/// The value of a `VARIABLE=value` line in an installer `script`, or `"unpinned"`. The
/// installers pin the versions, and the harness reads them there so the paths always agree.
pub fn pinned_in(script: &'static str, variable: &str) -> &'static str {
    script
        .lines()
        .find_map(|l| l.strip_prefix(variable)?.strip_prefix('='))
        .unwrap_or("unpinned")
}

/// helm, pinned in `e2e/install-helm.sh`; `WPEX_HELM` overrides.
pub fn helm() -> Result<PathBuf> {
    let version = pinned_in(HELM_INSTALLER, "HELM_VERSION");
    binary(
        "WPEX_HELM",
        cache_dir().join(format!("helm-{version}/bin/helm")),
        "run e2e/install-helm.sh",
    )
}

/// kubectl of the pinned Kubernetes version; `WPEX_KUBECTL` overrides.
pub fn kubectl() -> Result<PathBuf> {
    // Without the override, kubectl is beside the other Kubernetes binaries (`WPEX_K8S_BIN`).
    match std::env::var_os("WPEX_KUBECTL") {
        Some(_) => binary("WPEX_KUBECTL", "", "run e2e/k8s/install-k8s.sh"),
        None => k8s_binary("kubectl"),
    }
}

/// The chart in this repository.
pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/wpex")
}

/// Runs `program` with `KUBECONFIG` set when given; returns (success, stdout + stderr).
pub fn run_tool(
    program: &Path,
    args: &[&str],
    kubeconfig: Option<&Path>,
) -> Result<(bool, String)> {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    let out = command
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}
