//! The Helm chart: lint, render, values schema, and install/uninstall on a real API server.
//! Needs helm from `e2e/install-helm.sh` (and, for the install, the Kubernetes binaries).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use serde::Deserialize;
use serde_json::{Value, json};
use wpex_e2e::control_plane::{ControlPlane, pinned};
use wpex_e2e::tools::{chart, helm, run_tool};
use wpex_operator::crd::{WireGuardPeerKey, WireGuardRelay};

/// Runs helm, against `kubeconfig`'s cluster if given; returns (success, stdout + stderr).
fn run_helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<(bool, String)> {
    run_tool(&helm()?, args, kubeconfig).context("install helm with e2e/install-helm.sh")
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

/// Every optional value set, for one render.
const EVERYTHING: &str = "
rbac:
  watchNamespaces: [wpex-system, team-a]
imagePullSecrets: [{name: regcred}, {name: mirror}]
image: {pullPolicy: Always}
serviceAccount:
  annotations: {example.com/role: wpex}
podAnnotations: {example.com/team: networking}
podLabels: {team: networking, app.kubernetes.io/name: not-the-selector}
priorityClassName: wpex-critical
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: network, effect: NoSchedule}]
serviceMonitor:
  enabled: true
  labels: {release: prometheus}
relayPodMonitor:
  enabled: true
  interval: 15s
  labels: {release: prometheus}
";

/// The namespace of every offline render.
const NS: &str = "wpex-system";

/// `helm template RELEASE` of the chart in [`NS`] with `extra` arguments, offline; returns
/// (success, output).
fn template(release: &str, extra: &[&str]) -> Result<(bool, String)> {
    let chart = chart();
    let chart = chart.to_str().context("utf-8 path")?;
    let mut args = vec![
        "template",
        release,
        chart,
        "--namespace",
        NS,
        "--kube-version",
        pinned("K8S_VERSION"),
    ];
    args.extend_from_slice(extra);
    run_helm(&args, None)
}

/// The rendered documents of a release, parsed.
struct Render {
    text: String,
    docs: Vec<Value>,
}

/// `helm template` of release `wpex`, which must succeed.
fn render(extra: &[&str]) -> Result<Render> {
    render_release("wpex", extra)
}

fn render_release(release: &str, extra: &[&str]) -> Result<Render> {
    let (ok, text) = template(release, extra)?;
    ensure!(ok, "helm template {release} {extra:?} failed:\n{text}");
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).with_context(|| format!("rendered YAML:\n{text}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(Render { text, docs })
}

/// `helm template` of release `wpex`, which must fail; returns helm's output.
fn render_fails(extra: &[&str]) -> Result<String> {
    let (ok, out) = template("wpex", extra)?;
    ensure!(!ok, "helm template {extra:?} rendered:\n{out}");
    Ok(out)
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn strings(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Render {
    /// The `kind` of every document, sorted.
    fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.docs.iter().map(|d| text(d, "/kind")).collect();
        kinds.sort_unstable();
        kinds
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| text(d, "/kind") == kind)
            .collect()
    }

    fn names(&self, kind: &str) -> Vec<&str> {
        self.all(kind)
            .into_iter()
            .map(|d| text(d, "/metadata/name"))
            .collect()
    }

    /// The one `kind` named `name` (in `namespace`, if given).
    fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<&Value> {
        let found: Vec<&Value> = self
            .all(kind)
            .into_iter()
            .filter(|d| text(d, "/metadata/name") == name)
            .filter(|d| namespace.is_none_or(|ns| text(d, "/metadata/namespace") == ns))
            .collect();
        match found[..] {
            [one] => Ok(one),
            _ => bail!(
                "{} {kind} {namespace:?}/{name} in:\n{}",
                found.len(),
                self.text
            ),
        }
    }

    /// The only Deployment: the operator's.
    fn deployment(&self) -> Result<&Value> {
        match self.all("Deployment")[..] {
            [one] => Ok(one),
            _ => bail!("not one Deployment:\n{}", self.text),
        }
    }

    fn operator_args(&self) -> Result<Vec<String>> {
        Ok(strings(
            self.deployment()?,
            "/spec/template/spec/containers/0/args",
        ))
    }

    /// The `helm test` pod.
    fn test_pod(&self) -> Result<&Value> {
        let hooks: Vec<&Value> = self
            .all("Pod")
            .into_iter()
            .filter(|p| text(p, "/metadata/annotations/helm.sh~1hook") == "test")
            .collect();
        match hooks[..] {
            [one] => Ok(one),
            _ => bail!("not one helm test pod:\n{}", self.text),
        }
    }
}

/// What the operator may do in each namespace it watches: the Role of namespaced mode, and the
/// ClusterRole of cluster mode with one more rule for Nodes.
fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["wpex.io"], "resources": ["wireguardrelays", "wireguardpeerkeys"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["wpex.io"],
         "resources": ["wireguardrelays/status", "wireguardpeerkeys/status"],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps", "services"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// Whether any rule of a Role or ClusterRole names `resource`.
fn grants(role: &Value, resource: &str) -> bool {
    role["rules"].as_array().is_some_and(|rules| {
        rules
            .iter()
            .any(|r| strings(r, "/resources").iter().any(|x| x == resource))
    })
}

/// The ServiceAccount a RoleBinding or ClusterRoleBinding binds, as "namespace/name".
fn bound(binding: &Value) -> String {
    format!(
        "{}/{}",
        text(binding, "/subjects/0/namespace"),
        text(binding, "/subjects/0/name")
    )
}

#[test]
#[ignore = "needs helm from e2e/install-helm.sh"]
fn chart_lints_renders_and_validates_values() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let with_relay = values_file(dir.path(), "relay.yaml", WITH_RELAY)?;
    let with_relay = with_relay.to_str().context("utf-8 path")?;
    let everything = values_file(dir.path(), "everything.yaml", EVERYTHING)?;
    let everything = everything.to_str().context("utf-8 path")?;
    lints(with_relay, everything)?;
    default_render()?;
    default_rbac()?;
    rbac_cluster_scope()?;
    rbac_other_namespaces(with_relay)?;
    names()?;
    service_account_not_created()?;
    every_optional_value(everything)?;
    monitors(everything)?;
    helm_test_hook()?;
    relays_and_keys_from_values(with_relay)?;
    operator_replicas()?;
    values_schema(dir.path())
}

/// `helm lint` with the defaults, with relays, with every value, and cluster-wide.
fn lints(with_relay: &str, everything: &str) -> Result<()> {
    let chart = chart();
    let chart = chart.to_str().context("utf-8 path")?;
    let kube = pinned("K8S_VERSION");
    for args in [
        vec!["lint", chart, "--kube-version", kube],
        vec!["lint", chart, "-f", with_relay, "--kube-version", kube],
        vec!["lint", chart, "-f", everything, "--kube-version", kube],
        vec![
            "lint",
            chart,
            "--set",
            "rbac.scope=cluster",
            "--kube-version",
            kube,
        ],
    ] {
        let (ok, out) = run_helm(&args, None)?;
        ensure!(ok, "helm {args:?} failed:\n{out}");
    }
    Ok(())
}

/// The defaults: the operator's objects in the release's namespace, named as before for "wpex".
fn default_render() -> Result<()> {
    let plain = render(&[])?;
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Pod",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ];
    ensure!(
        plain.kinds() == expected,
        "default render: {:?}",
        plain.kinds()
    );
    let deployment = plain.get("Deployment", Some(NS), "wpex-operator")?;
    ensure!(
        text(
            deployment,
            "/spec/template/metadata/labels/app.kubernetes.io~1name"
        ) == "wpex-operator"
            && text(deployment, "/spec/template/spec/serviceAccountName") == "wpex-operator",
        "the operator pods keep their label and run as wpex-operator: {deployment:#}"
    );
    plain.get("ServiceAccount", Some(NS), "wpex-operator")?;
    let args = plain.operator_args()?;
    for arg in [
        "--relay-image=wpex/wpex:0.1.0",
        "--lease-name=wpex-operator",
        "--namespace=wpex-system",
    ] {
        ensure!(args.iter().any(|a| a == arg), "{arg} in {args:?}");
    }
    ensure!(
        args.iter()
            .filter(|a| a.starts_with("--namespace="))
            .count()
            == 1
            && !args
                .iter()
                .any(|a| a.starts_with("--relay-image-pull-secret=")),
        "{args:?}"
    );
    ensure!(
        text(deployment, "/spec/template/spec/containers/0/image") == "wpex/wpex-operator:0.1.0",
        "{deployment:#}"
    );
    Ok(())
}

/// The default RBAC: namespaced for the release's namespace; cluster-wide, only `get` on Nodes.
fn default_rbac() -> Result<()> {
    let plain = render(&[])?;
    let role = plain.get("Role", Some(NS), "wpex-operator")?;
    ensure!(
        role["rules"] == operator_rules(),
        "the namespaced Role: {role:#}"
    );
    let binding = plain.get("RoleBinding", Some(NS), "wpex-operator")?;
    ensure!(
        bound(binding) == "wpex-system/wpex-operator" && text(binding, "/roleRef/kind") == "Role",
        "{binding:#}"
    );
    ensure!(
        !plain
            .all("ClusterRole")
            .iter()
            .any(|r| grants(r, "configmaps")),
        "nothing cluster-wide but Nodes: {}",
        plain.text
    );
    // Cluster-wide, only `get` on Nodes.
    let nodes = plain.get("ClusterRole", None, "wpex-operator-nodes")?;
    ensure!(
        nodes["rules"] == json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]),
        "the only ClusterRole reads Nodes and nothing else: {nodes:#}"
    );
    ensure!(
        bound(plain.get("ClusterRoleBinding", None, "wpex-operator-nodes")?)
            == "wpex-system/wpex-operator",
        "{}",
        plain.text
    );
    let election = plain.get("Role", Some(NS), "wpex-operator-leader-election")?;
    ensure!(
        election["rules"]
            == json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                       "verbs": ["get", "create", "update", "patch"]}]),
        "{election:#}"
    );
    Ok(())
}

/// rbac.readNodes=false grants nothing cluster-wide; rbac.scope=cluster grants one ClusterRole
/// with the same rules and Nodes, and every namespace is watched.
fn rbac_cluster_scope() -> Result<()> {
    // rbac.readNodes=false: no cluster-wide grant at all.
    let no_nodes = render(&["--set", "rbac.readNodes=false"])?;
    ensure!(
        no_nodes.all("ClusterRole").is_empty() && no_nodes.all("ClusterRoleBinding").is_empty(),
        "{:?}",
        no_nodes.kinds()
    );

    // rbac.scope=cluster: one ClusterRole with the same rules and Nodes, every namespace watched.
    let cluster = render(&["--set", "rbac.scope=cluster"])?;
    let role = cluster.get("ClusterRole", None, "wpex-operator")?;
    let mut rules = operator_rules();
    rules
        .as_array_mut()
        .context("rules")?
        .push(json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}));
    ensure!(
        role["rules"] == rules && grants(role, "configmaps"),
        "the cluster-wide ClusterRole: {role:#}"
    );
    ensure!(
        bound(cluster.get("ClusterRoleBinding", None, "wpex-operator")?)
            == "wpex-system/wpex-operator",
        "{}",
        cluster.text
    );
    ensure!(
        cluster.names("ClusterRole") == ["wpex-operator"]
            && cluster.names("Role") == ["wpex-operator-leader-election"],
        "cluster mode: {}",
        cluster.text
    );
    let args = cluster.operator_args()?;
    ensure!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "cluster mode watches every namespace: {args:?}"
    );
    // ...whatever rbac.watchNamespaces says, so that `--reuse-values --set rbac.scope=cluster`
    // works after watching namespaces.
    let both = render(&[
        "--set",
        "rbac.scope=cluster",
        "--set",
        "rbac.watchNamespaces={a}",
    ])?;
    ensure!(
        both.names("Role") == ["wpex-operator-leader-election"]
            && !both
                .operator_args()?
                .iter()
                .any(|a| a.starts_with("--namespace")),
        "rbac.scope=cluster ignores rbac.watchNamespaces: {}",
        both.text
    );
    Ok(())
}

/// rbac.watchNamespaces: a Role and RoleBinding in each other namespace, a --namespace for each.
fn rbac_other_namespaces(with_relay: &str) -> Result<()> {
    let watched = render(&["--set", "rbac.watchNamespaces={a,b}"])?;
    for ns in ["a", "b"] {
        let role = watched.get("Role", Some(ns), "wpex-operator")?;
        ensure!(role["rules"] == operator_rules(), "{role:#}");
        let binding = watched.get("RoleBinding", Some(ns), "wpex-operator")?;
        ensure!(
            bound(binding) == "wpex-system/wpex-operator",
            "bound to the release's ServiceAccount: {binding:#}"
        );
    }
    ensure!(
        watched.get("Role", Some(NS), "wpex-operator").is_err()
            && watched.names("ClusterRole") == ["wpex-operator-nodes"],
        "only a and b: {}",
        watched.text
    );
    let args = watched.operator_args()?;
    let namespaces: Vec<&String> = args
        .iter()
        .filter(|a| a.starts_with("--namespace="))
        .collect();
    ensure!(namespaces == ["--namespace=a", "--namespace=b"], "{args:?}");
    ensure!(
        args.iter().any(|a| a == "--lease-name=wpex-operator"),
        "the Lease stays in the release's namespace: {args:?}"
    );
    // Relays of the release go to its namespace, which must then be watched.
    let out = render_fails(&["--set", "rbac.watchNamespaces={a}", "-f", with_relay])?;
    ensure!(out.contains("rbac.watchNamespaces"), "{out}");
    Ok(())
}

/// Names: fullnameOverride, nameOverride, and a release without the chart's name.
fn names() -> Result<()> {
    let full = render(&["--set", "fullnameOverride=tunnel"])?;
    ensure!(
        full.names("Deployment") == ["tunnel-operator"]
            && full.names("ServiceAccount") == ["tunnel-operator"]
            && full.names("Service") == ["tunnel-operator-metrics"]
            && full.names("ClusterRole") == ["tunnel-operator-nodes"]
            && full.get("Role", Some(NS), "tunnel-operator").is_ok()
            && full
                .operator_args()?
                .contains(&"--lease-name=tunnel-operator".to_owned()),
        "fullnameOverride=tunnel: {}",
        full.text
    );
    let names: Vec<&str> = full
        .docs
        .iter()
        .map(|d| text(d, "/metadata/name"))
        .collect();
    ensure!(
        names.iter().all(|n| n.starts_with("tunnel-operator")),
        "every object is renamed: {names:?}"
    );
    let named = render(&["--set", "nameOverride=tunnel"])?;
    let deployment = named.get("Deployment", Some(NS), "wpex-tunnel-operator")?;
    ensure!(
        text(
            deployment,
            "/spec/template/metadata/labels/app.kubernetes.io~1name"
        ) == "tunnel-operator"
            && named.names("Service") == ["wpex-tunnel-operator-metrics"],
        "nameOverride=tunnel: {}",
        named.text
    );
    let other = render_release("prod", &[])?;
    ensure!(
        other.names("Deployment") == ["prod-wpex-operator"]
            && text(
                other.deployment()?,
                "/spec/template/metadata/labels/app.kubernetes.io~1instance"
            ) == "prod",
        "release prod: {}",
        other.text
    );
    let long = "a-release-name-long-enough-to-need-trimming-for-wpex";
    let trimmed = render_release(long, &[])?;
    for service in trimmed.names("Service") {
        ensure!(service.len() <= 63, "Service {service} is no DNS label");
    }
    Ok(())
}

/// serviceAccount.create=false: no ServiceAccount; the RBAC binds the one named.
fn service_account_not_created() -> Result<()> {
    let existing = render(&[
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=ops",
    ])?;
    ensure!(
        existing.all("ServiceAccount").is_empty()
            && text(
                existing.deployment()?,
                "/spec/template/spec/serviceAccountName"
            ) == "ops",
        "{}",
        existing.text
    );
    for binding in existing
        .all("RoleBinding")
        .into_iter()
        .chain(existing.all("ClusterRoleBinding"))
    {
        ensure!(bound(binding) == "wpex-system/ops", "{binding:#}");
    }
    let default_account = render(&["--set", "serviceAccount.create=false"])?;
    ensure!(
        text(
            default_account.deployment()?,
            "/spec/template/spec/serviceAccountName"
        ) == "default",
        "{}",
        default_account.text
    );
    Ok(())
}

/// Every other optional value, in one render: the operator pod and its ServiceAccount.
fn every_optional_value(everything: &str) -> Result<()> {
    let all = render(&["-f", everything])?;
    let deployment = all.deployment()?;
    let pod = &deployment["spec"]["template"];
    ensure!(
        text(pod, "/spec/priorityClassName") == "wpex-critical"
            && text(pod, "/metadata/annotations/example.com~1team") == "networking"
            && text(pod, "/metadata/labels/team") == "networking"
            && text(pod, "/metadata/labels/app.kubernetes.io~1name") == "wpex-operator",
        "the pod template takes podAnnotations, podLabels (but not over the selector's) and \
         priorityClassName: {pod:#}"
    );
    ensure!(
        deployment["spec"]["selector"]["matchLabels"]
            == json!({"app.kubernetes.io/name": "wpex-operator", "app.kubernetes.io/instance": "wpex"}),
        "{deployment:#}"
    );
    ensure!(
        pod["spec"]["imagePullSecrets"] == json!([{"name": "regcred"}, {"name": "mirror"}]),
        "{pod:#}"
    );
    let args = all.operator_args()?;
    for arg in [
        "--relay-image-pull-secret=regcred",
        "--relay-image-pull-secret=mirror",
    ] {
        ensure!(
            args.iter().any(|a| a == arg),
            "relay pods get the pull secrets: {args:?}"
        );
    }
    let account = all.get("ServiceAccount", Some(NS), "wpex-operator")?;
    ensure!(
        text(account, "/metadata/annotations/example.com~1role") == "wpex",
        "{account:#}"
    );
    Ok(())
}

/// The monitors (opt-in) and the test pod, with every optional value set.
fn monitors(everything: &str) -> Result<()> {
    let all = render(&["-f", everything])?;
    let pod = &all.deployment()?["spec"]["template"];
    let plain = render(&[])?;
    let monitor = all.get("ServiceMonitor", Some(NS), "wpex-operator")?;
    ensure!(
        text(monitor, "/metadata/labels/release") == "prometheus"
            && text(monitor, "/metadata/labels/app.kubernetes.io~1name") == "wpex-operator",
        "serviceMonitor.labels: {monitor:#}"
    );
    let relays = all.get("PodMonitor", Some(NS), "wpex-relays")?;
    ensure!(
        text(relays, "/apiVersion") == "monitoring.coreos.com/v1"
            && text(relays, "/metadata/labels/release") == "prometheus"
            && relays["spec"]["selector"]["matchLabels"]
                == json!({"app.kubernetes.io/name": "wpex-relay",
                          "app.kubernetes.io/managed-by": "wpex-operator"})
            && relays["spec"]["podMetricsEndpoints"]
                == json!([{"port": "metrics", "interval": "15s"}])
            && relays["spec"]["namespaceSelector"]
                == json!({"matchNames": ["wpex-system", "team-a"]}),
        "the relays' PodMonitor: {relays:#}"
    );
    let test = all.test_pod()?;
    ensure!(
        test["spec"]["imagePullSecrets"] == pod["spec"]["imagePullSecrets"]
            && test["spec"]["nodeSelector"] == json!({"kubernetes.io/os": "linux"})
            && test["spec"]["tolerations"] == pod["spec"]["tolerations"]
            && test["spec"]["tolerations"].is_array()
            && text(test, "/spec/containers/0/imagePullPolicy") == "Always",
        "the test pod pulls and schedules like the operator: {test:#}"
    );
    let cluster_relays = render(&[
        "--set",
        "rbac.scope=cluster",
        "--set",
        "relayPodMonitor.enabled=true",
    ])?;
    let relays = cluster_relays.get("PodMonitor", Some(NS), "wpex-relays")?;
    ensure!(
        relays["spec"]["namespaceSelector"] == json!({"any": true}),
        "{relays:#}"
    );
    ensure!(
        plain.all("PodMonitor").is_empty() && plain.all("ServiceMonitor").is_empty(),
        "monitors are opt-in"
    );
    Ok(())
}

/// `helm test`: the operator's image probes /readyz through the metrics Service, found by the
/// Service's environment variables (no cluster DNS needed).
fn helm_test_hook() -> Result<()> {
    let plain = render(&[])?;
    let test = plain.test_pod()?;
    let service = plain.get("Service", Some(NS), "wpex-operator-metrics")?;
    ensure!(
        service["spec"]["ports"][0]["port"] == 8080
            && service["spec"]["ports"][0]["name"] == "metrics",
        "{service:#}"
    );
    ensure!(
        strings(test, "/spec/containers/0/args")
            == [
                "probe",
                "http://$(WPEX_OPERATOR_METRICS_SERVICE_HOST):$(WPEX_OPERATOR_METRICS_SERVICE_PORT_METRICS)/readyz"
            ]
            && test["spec"]["containers"][0]["command"].is_null()
            && text(test, "/spec/containers/0/image") == "wpex/wpex-operator:0.1.0"
            && text(test, "/spec/restartPolicy") == "Never"
            && text(test, "/metadata/annotations/helm.sh~1hook-delete-policy")
                == "before-hook-creation,hook-succeeded",
        "the test hook: {test:#}"
    );
    let operator = &plain.deployment()?["spec"]["template"]["spec"];
    ensure!(
        test["spec"]["containers"][0]["securityContext"]
            == operator["containers"][0]["securityContext"]
            && test["spec"]["securityContext"] == operator["securityContext"]
            && text(test, "/spec/containers/0/imagePullPolicy") == "IfNotPresent",
        "as hardened as the operator: {test:#}"
    );
    ensure!(
        text(test, "/metadata/labels/app.kubernetes.io~1name") != "wpex-operator",
        "the operator's Service and selectors must not pick the test pod: {test:#}"
    );
    Ok(())
}

/// Relays and keys given as values become WireGuardRelay and WireGuardPeerKey objects.
fn relays_and_keys_from_values(with_relay: &str) -> Result<()> {
    let full = render(&["-f", with_relay])?;
    let k = full.kinds();
    let count = |kind: &str| k.iter().filter(|x| **x == kind).count();
    ensure!(
        count("WireGuardRelay") == 1 && count("WireGuardPeerKey") == 2,
        "{k:?}"
    );
    ensure!(count("ServiceMonitor") == 1, "{k:?}");
    ensure!(
        full.text.contains("nodePort: 31820") && full.text.contains("disabled: true"),
        "{}",
        full.text
    );
    Ok(())
}

/// More than one operator replica: spread over nodes, and kept through a drain.
fn operator_replicas() -> Result<()> {
    let plain = render(&[])?;
    let ha = render(&["--set", "replicaCount=2"])?;
    let pdb = ha.get("PodDisruptionBudget", Some(NS), "wpex-operator")?;
    let spec = &ha.deployment()?["spec"];
    ensure!(
        spec["replicas"] == 2
            && pdb["spec"]["minAvailable"] == 1
            && !spec["template"]["spec"]["affinity"]["podAntiAffinity"].is_null(),
        "replicaCount=2:\n{}",
        ha.text
    );
    let spec = &plain.deployment()?["spec"];
    ensure!(
        spec["replicas"] == 1 && spec["template"]["spec"]["affinity"].is_null(),
        "one replica needs neither: {}",
        plain.text
    );
    Ok(())
}

/// The values schema: `global` is allowed (as a subchart), an unknown value or a malformed key
/// is refused before anything reaches the cluster.
fn values_schema(dir: &Path) -> Result<()> {
    // The values schema: `global` is allowed (as a subchart), an unknown value is not.
    render(&["--set", "global.foo=bar"])?;
    let out = render_fails(&["--set", "bogus=1"])?;
    ensure!(out.contains("bogus"), "the error names the value:\n{out}");
    let out = render_fails(&["--set", "rbac.scope=everywhere"])?;
    ensure!(out.contains("scope"), "{out}");

    // The values schema refuses a malformed key before anything reaches the cluster.
    let bad = values_file(
        dir,
        "bad.yaml",
        "peerKeys: [{name: x, relay: edge, publicKey: AAAA}]\n",
    )?;
    let out = render_fails(&["-f", bad.to_str().context("utf-8")?])?;
    ensure!(
        out.contains("publicKey"),
        "the error names the field:\n{out}"
    );
    // A relay name is a Service name: the schema refuses what the CRD would, before install.
    let digit = values_file(dir, "digit.yaml", "relays: [{name: 1edge}]\n")?;
    let out = render_fails(&["-f", digit.to_str().context("utf-8")?])?;
    ensure!(out.contains("name"), "the error names the field:\n{out}");
    // Names YAML would read as booleans stay strings.
    let yes = values_file(
        dir,
        "yes.yaml",
        "relays: [{name: \"on\"}]\npeerKeys: [{name: \"y\", relay: \"on\", publicKey: HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=}]\n",
    )?;
    let rendered = render(&["-f", yes.to_str().context("utf-8")?])?;
    let relay = rendered
        .docs
        .iter()
        .find(|d| d["kind"] == "WireGuardRelay")
        .context("the relay")?;
    let key = rendered
        .docs
        .iter()
        .find(|d| d["kind"] == "WireGuardPeerKey")
        .context("the key")?;
    ensure!(
        relay["metadata"]["name"] == "on"
            && key["metadata"]["name"] == "y"
            && key["spec"]["relay"] == "on",
        "{relay:#} {key:#}"
    );
    Ok(())
}

/// The arguments of the operator container, as the API server stores them.
async fn operator_args(deployments: &Api<Deployment>) -> Result<Vec<String>> {
    let deployment = deployments.get("wpex-operator").await?;
    Ok(deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default())
}

#[tokio::test]
#[ignore = "needs helm from e2e/install-helm.sh and the Kubernetes binaries"]
async fn helm_install_and_uninstall_on_a_real_api_server() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let release = Release {
        client: cp.client(),
        kubeconfig: cp.kubeconfig_path(),
        chart: chart(),
    };
    let out = release.install().await.inspect_err(|_| cp.print_logs())?;
    release.notes_commands_work(&out).await?;
    release.default_rbac().await?;
    release.readme_upgrades().await?;
    release.uninstall().await
}

/// The chart installed as release `wpex` in `wpex-system` on a bare API server.
struct Release<'a> {
    client: kube::Client,
    kubeconfig: &'a Path,
    chart: PathBuf,
}

impl Release<'_> {
    fn on_cluster(&self) -> Option<&Path> {
        Some(self.kubeconfig)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "wpex-system")
    }

    /// `helm install`, which shows the NOTES and creates the CRDs and the operator's
    /// Deployment; returns helm's output.
    async fn install(&self) -> Result<String> {
        let chart = self.chart.to_str().context("utf-8 path")?;
        let on_cluster = self.on_cluster();
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
        ensure!(ok, "helm install failed:\n{out}");
        ensure!(
            out.contains("kubectl get wgr") && out.contains("helm test wpex -n wpex-system"),
            "NOTES.txt is shown:\n{out}"
        );

        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for name in ["wireguardrelays.wpex.io", "wireguardpeerkeys.wpex.io"] {
            crds.get(name)
                .await
                .with_context(|| format!("CRD {name} installed"))?;
        }
        self.deployments()
            .get("wpex-operator")
            .await
            .context("operator Deployment")?;
        Ok(out)
    }

    /// The NOTES commands work as pasted (with a real key for the placeholder).
    async fn notes_commands_work(&self, out: &str) -> Result<()> {
        let (client, kubeconfig) = (&self.client, self.kubeconfig);
        let commands = notes_commands(out);
        ensure!(commands.len() == 4, "4 commands in NOTES:\n{out}");
        let (_, key) = wpex_e2e::wg::keypair()?;
        let kubectl = wpex_e2e::tools::kubectl()?;
        let kubectl_dir = kubectl.parent().context("kubectl's directory")?;
        for command in commands {
            let command = command.replace("<base64 public key>", &key);
            let path = format!(
                "{}:{}",
                kubectl_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let out = std::process::Command::new("bash")
                .args(["-euo", "pipefail", "-c", &command])
                .env("KUBECONFIG", kubeconfig)
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
        Ok(())
    }

    /// The API server takes the RBAC: by default a Role in the release's namespace, and only
    /// Nodes cluster-wide.
    async fn default_rbac(&self) -> Result<()> {
        let client = &self.client;
        let roles: Api<Role> = Api::namespaced(client.clone(), "wpex-system");
        for name in ["wpex-operator", "wpex-operator-leader-election"] {
            roles
                .get(name)
                .await
                .with_context(|| format!("Role {name}"))?;
        }
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        cluster_roles
            .get("wpex-operator-nodes")
            .await
            .context("the Nodes ClusterRole")?;
        ensure!(
            cluster_roles.get_opt("wpex-operator").await?.is_none(),
            "no cluster-wide ClusterRole by default"
        );
        Ok(())
    }

    /// The README's upgrades: watch one more namespace, then every namespace.
    async fn readme_upgrades(&self) -> Result<()> {
        let (client, deployments) = (&self.client, self.deployments());
        let roles: Api<Role> = Api::namespaced(client.clone(), "wpex-system");
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let team_a = Namespace {
            metadata: ObjectMeta {
                name: Some("team-a".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces.create(&PostParams::default(), &team_a).await?;
        // `helm upgrade --reuse-values --set VALUE`, as the README writes it.
        let upgrade = |value: &str| -> Result<()> {
            let chart = self.chart.to_str().context("utf-8 path")?;
            let args = [
                "upgrade",
                "wpex",
                chart,
                "--namespace",
                "wpex-system",
                "--reuse-values",
                "--set",
                value,
            ];
            let (ok, out) = run_helm(&args, self.on_cluster())?;
            ensure!(ok, "helm upgrade --set {value} failed:\n{out}");
            Ok(())
        };
        upgrade("rbac.watchNamespaces={wpex-system,team-a}")?;
        let team_roles: Api<Role> = Api::namespaced(client.clone(), "team-a");
        team_roles
            .get("wpex-operator")
            .await
            .context("the Role in team-a")?;
        let args = operator_args(&deployments).await?;
        ensure!(
            args.contains(&"--namespace=wpex-system".to_owned())
                && args.contains(&"--namespace=team-a".to_owned()),
            "{args:?}"
        );
        upgrade("rbac.scope=cluster")?;
        cluster_roles
            .get("wpex-operator")
            .await
            .context("the cluster-wide ClusterRole")?;
        ensure!(
            cluster_roles
                .get_opt("wpex-operator-nodes")
                .await?
                .is_none()
                && team_roles.get_opt("wpex-operator").await?.is_none()
                && roles.get_opt("wpex-operator").await?.is_none(),
            "the namespaced RBAC is gone in cluster mode"
        );
        let args = operator_args(&deployments).await?;
        ensure!(
            !args.iter().any(|a| a.starts_with("--namespace")),
            "{args:?}"
        );
        Ok(())
    }

    /// `helm uninstall` leaves no operator, no ClusterRole and no release.
    async fn uninstall(&self) -> Result<()> {
        let (on_cluster, deployments) = (self.on_cluster(), self.deployments());
        let cluster_roles: Api<ClusterRole> = Api::all(self.client.clone());
        let (ok, out) = run_helm(
            &["uninstall", "wpex", "--namespace", "wpex-system", "--wait"],
            on_cluster,
        )?;
        ensure!(ok, "helm uninstall failed:\n{out}");
        ensure!(
            deployments.get_opt("wpex-operator").await?.is_none(),
            "the operator Deployment is gone"
        );
        ensure!(
            cluster_roles.get_opt("wpex-operator").await?.is_none(),
            "the ClusterRole is gone"
        );
        let (_, list) = run_helm(&["list", "--all-namespaces", "--short"], on_cluster)?;
        ensure!(list.trim().is_empty(), "no release left: {list}");
        Ok(())
    }
}
