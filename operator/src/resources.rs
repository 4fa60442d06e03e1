//! The objects a WireGuardRelay owns, built by pure functions from the validated relay.
//!
//! Nothing here depends on the keys except the key ConfigMaps: a key change must never touch the pod
//! template, or every key change would restart the relay and drop everyone's sessions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, Container, ContainerPort, HTTPGetAction,
    KeyToPath, LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wpex_proto::keys::PublicKey;

use crate::crd::{AccessMode, LogLevel, ServiceType, WireGuardRelaySpec};

/// How many ConfigMaps a relay's keys are spread over. A ConfigMap holds at most 1 MiB, about
/// 23,000 keys; one projected volume mounts them all as files of one directory, which the
/// relay reads as one list (`--allow-file` a directory) and kubelet swaps whole.
pub const KEY_SHARDS: usize = 16;
/// Keys one shard holds at most: 45 bytes a line, 900,000 bytes, under the API server's 1 MiB
/// with room for the header; 320,000 keys a relay in all.
pub const SHARD_KEYS: usize = 20_000;
/// Where the relay container mounts the key shards, whole; `--allow-file` is this directory.
pub const KEYS_MOUNT: &str = "/etc/wpex/keys";

/// The shard a key lives in: fixed by the key alone, so adding or removing one key rewrites
/// one ConfigMap. Public keys are curve points, so their first byte is spread evenly.
pub fn shard_of(key: &PublicKey) -> usize {
    usize::from(key.0[0]) % KEY_SHARDS
}

/// The file (and the ConfigMap data key) of shard `shard`: named so that the directory's name
/// order is the shards' order.
pub fn key_file(shard: usize) -> String {
    format!("keys-{shard:02}")
}
/// The relay pod's metrics and health port: its probes, and the operator's handshake scrapes.
pub const METRICS_PORT: i32 = 9090;
const KEYS_VOLUME: &str = "keys";
/// Non-root user of the distroless/static images.
const RUN_AS: i64 = 65532;

/// A WireGuardRelay after dereferencing: the identity its children need.
#[derive(Debug, Clone, PartialEq)]
pub struct Relay {
    /// The relay's name, also the name of its Deployment and Service.
    pub name: String,
    /// The namespace the relay and its children live in.
    pub namespace: String,
    /// The relay as its children's controller owner, so the garbage collector deletes them
    /// with it.
    pub owner: OwnerReference,
    /// The relay's spec, as read.
    pub spec: WireGuardRelaySpec,
}

/// The name of the ConfigMap holding shard `shard` of `relay`'s accepted keys:
/// `<relay>-keys-<shard>`.
pub fn keys_config_map_name(relay: &str, shard: usize) -> String {
    format!("{relay}-keys-{shard}")
}

/// The annotation on each key shard with a digest of its data, so that the apply step can tell
/// an unchanged shard from its metadata alone, without reading its keys back.
pub const KEYS_DIGEST_ANNOTATION: &str = "wpex.io/keys-digest";

/// The digest [`KEYS_DIGEST_ANNOTATION`] holds: BLAKE2s of the shard's text, 128 bits in hex.
pub fn keys_digest(text: &str) -> String {
    use blake2::Digest;
    let hash = blake2::Blake2s256::digest(text.as_bytes());
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The single ConfigMap of keys that operators before the shards wrote: `<relay>-keys`.
pub fn legacy_keys_config_map_name(relay: &str) -> String {
    format!("{relay}-keys")
}

/// The label naming the relay a child or pod belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
const NAME_LABEL: &str = "app.kubernetes.io/name";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGER: &str = "wpex-operator";

/// The labels every relay's children and pods carry: what the operator's watches select on, so
/// it caches its own objects and nothing else of the cluster.
pub fn pod_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), "wpex-relay".to_owned()),
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
    ])
}

/// Labels on every child of `relay`, and its pod selector.
pub fn labels(relay: &str) -> BTreeMap<String, String> {
    let mut labels = pod_labels();
    labels.insert(INSTANCE_LABEL.to_owned(), relay.to_owned());
    labels
}

/// A label selector matching all of `labels`.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn metadata(relay: &Relay, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(relay.namespace.clone()),
        labels: Some(labels(&relay.name)),
        owner_references: Some(vec![relay.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMaps of the relay's accepted keys, one per shard (empty ones too, so that the
/// volume always mounts), in the `--allow-file` format. The only children that depend on the
/// keys. Admission keeps each shard within [`SHARD_KEYS`].
pub fn config_maps(relay: &Relay, keys: &[PublicKey]) -> Vec<ConfigMap> {
    let mut shards: Vec<Vec<PublicKey>> = vec![Vec::new(); KEY_SHARDS];
    for key in keys {
        shards[shard_of(key)].push(*key);
    }
    shards
        .into_iter()
        .enumerate()
        .map(|(n, keys)| {
            let header = format!(
                "Allowed WireGuard public keys of relay {}/{}, shard {n} of {KEY_SHARDS}.\nManaged by wpex-operator from WireGuardPeerKeys: edits here are overwritten.",
                relay.namespace, relay.name
            );
            let text = wpex_proto::keyfile::render(&header, keys);
            let mut metadata = metadata(relay, keys_config_map_name(&relay.name, n));
            metadata.annotations = Some(BTreeMap::from([(
                KEYS_DIGEST_ANNOTATION.to_owned(),
                keys_digest(&text),
            )]));
            ConfigMap {
                metadata,
                data: Some(BTreeMap::from([(key_file(n), text)])),
                ..ConfigMap::default()
            }
        })
        .collect()
}

fn args(spec: &WireGuardRelaySpec) -> Vec<String> {
    let mut args = vec![
        "--port".to_owned(),
        spec.port.to_string(),
        "--metrics-addr".to_owned(),
        format!("0.0.0.0:{METRICS_PORT}"),
        "--log-format".to_owned(),
        "json".to_owned(),
    ];
    if spec.access_mode == AccessMode::AllowList {
        args.extend(["--allow-file".to_owned(), KEYS_MOUNT.to_owned()]);
    }
    if let Some(rate) = spec.broadcast_rate.filter(|r| *r > 0) {
        args.extend(["--broadcast-rate".to_owned(), rate.to_string()]);
    }
    if spec.log_level == LogLevel::Debug {
        args.push("--debug".to_owned());
    }
    args
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// What the operator's flags add to every relay pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodDefaults {
    /// The image unless the relay sets `spec.image`.
    pub image: String,
    /// Image pull secrets, which must exist in each relay's namespace.
    pub pull_secrets: Vec<String>,
}

/// Everything a relay owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The accepted keys, one ConfigMap per shard, mounted into the relay pod.
    pub config_maps: Vec<ConfigMap>,
    /// The relay itself: one pod, never two at once.
    pub deployment: Deployment,
    /// The UDP Service peers reach the relay through.
    pub service: Service,
}

/// Build: every child of `relay`, from its spec, its accepted keys and the operator's defaults.
pub fn build(relay: &Relay, keys: &[PublicKey], defaults: &PodDefaults) -> Children {
    Children {
        config_maps: config_maps(relay, keys),
        deployment: deployment(relay, defaults),
        service: service(relay),
    }
}

/// The relay's Deployment: one replica, recreated rather than rolled, non-root and read-only.
pub fn deployment(relay: &Relay, defaults: &PodDefaults) -> Deployment {
    Deployment {
        metadata: metadata(relay, relay.name.clone()),
        spec: Some(DeploymentSpec {
            // Relay state lives in memory: one replica, and never two at once.
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(labels(&relay.name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&relay.name)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(relay, defaults)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn pod_spec(relay: &Relay, defaults: &PodDefaults) -> PodSpec {
    let spec = &relay.spec;
    PodSpec {
        containers: vec![relay_container(spec, defaults)],
        volumes: keys_volume(relay),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        image_pull_secrets: pull_secrets(defaults),
        automount_service_account_token: Some(false),
        security_context: Some(pod_security_context()),
        ..PodSpec::default()
    }
}

fn relay_container(spec: &WireGuardRelaySpec, defaults: &PodDefaults) -> Container {
    Container {
        name: "wpex".to_owned(),
        image: Some(spec.image.clone().unwrap_or_else(|| defaults.image.clone())),
        args: Some(args(spec)),
        ports: Some(container_ports(spec)),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: spec.resources.clone(),
        security_context: Some(container_security_context()),
        volume_mounts: keys_mount(spec),
        ..Container::default()
    }
}

fn container_ports(spec: &WireGuardRelaySpec) -> Vec<ContainerPort> {
    vec![
        ContainerPort {
            name: Some("wireguard".to_owned()),
            container_port: i32::from(spec.port),
            protocol: Some("UDP".to_owned()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        },
    ]
}

/// Non-root, read-only, no privileges: the relay needs nothing but its UDP socket.
fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The key shards as one volume; only an allow-list relay reads keys.
fn keys_volume(relay: &Relay) -> Option<Vec<Volume>> {
    (relay.spec.access_mode == AccessMode::AllowList).then(|| {
        let sources = (0..KEY_SHARDS)
            .map(|n| VolumeProjection {
                // Only the shard's own file: a key someone adds to the ConfigMap is no file.
                config_map: Some(ConfigMapProjection {
                    name: keys_config_map_name(&relay.name, n),
                    items: Some(vec![KeyToPath {
                        key: key_file(n),
                        path: key_file(n),
                        ..KeyToPath::default()
                    }]),
                    ..ConfigMapProjection::default()
                }),
                ..VolumeProjection::default()
            })
            .collect();
        vec![Volume {
            name: KEYS_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        }]
    })
}

fn keys_mount(spec: &WireGuardRelaySpec) -> Option<Vec<VolumeMount>> {
    // No subPath: kubelet only updates a ConfigMap volume mounted whole.
    (spec.access_mode == AccessMode::AllowList).then(|| {
        vec![VolumeMount {
            name: KEYS_VOLUME.to_owned(),
            mount_path: KEYS_MOUNT.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]
    })
}

fn pull_secrets(defaults: &PodDefaults) -> Option<Vec<LocalObjectReference>> {
    (!defaults.pull_secrets.is_empty()).then(|| {
        defaults
            .pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    })
}

/// The relay's UDP Service, exposed as `spec.service` says.
pub fn service(relay: &Relay) -> Service {
    let spec = &relay.spec;
    let exposed = spec.service.type_ != ServiceType::ClusterIp;
    let mut metadata = metadata(relay, relay.name.clone());
    if !spec.service.annotations.is_empty() {
        metadata.annotations = Some(spec.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().to_owned()),
            selector: Some(labels(&relay.name)),
            ports: Some(vec![ServicePort {
                name: Some("wireguard".to_owned()),
                protocol: Some("UDP".to_owned()),
                port: i32::from(spec.port),
                target_port: Some(IntOrString::String("wireguard".to_owned())),
                node_port: spec.service.node_port.filter(|_| exposed),
                ..ServicePort::default()
            }]),
            // Only valid on externally reachable Services.
            external_traffic_policy: exposed
                .then(|| spec.service.external_traffic_policy.as_str().to_owned()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RelayService, TrafficPolicy};

    fn relay(spec: WireGuardRelaySpec) -> Relay {
        Relay {
            name: "edge".into(),
            namespace: "net".into(),
            owner: OwnerReference {
                api_version: "wpex.io/v1alpha1".into(),
                kind: "WireGuardRelay".into(),
                name: "edge".into(),
                uid: "0000-1111".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            spec,
        }
    }

    fn default_spec() -> WireGuardRelaySpec {
        serde_json::from_str("{}").expect("every field has a default")
    }

    /// Issue 19 asked whether a name the CEL rule admits (63 characters) can make a child name
    /// too long. It cannot: the Service takes the name as is (a DNS-1035 label, 63), the labels
    /// carry it as is (63), and the key ConfigMaps' `-keys-<n>` names are DNS subdomains (253).
    #[test]
    fn the_longest_relay_name_fits_every_child() {
        let mut r = relay(default_spec());
        r.name = format!("r{}", "x".repeat(62));
        let children = build(&r, &[], &PodDefaults::default());
        let label = |s: &str| {
            s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        assert!(label(&name(&children.service.metadata)), "Service name");
        assert!(label(&r.name));
        for (n, shard) in children.config_maps.iter().enumerate() {
            let keys = name(&shard.metadata);
            assert!(
                keys.len() <= 253 && keys.ends_with(&format!("-keys-{n}")),
                "{keys}"
            );
        }
        for (k, v) in labels(&r.name) {
            assert!(v.len() <= 63, "label {k}={v}");
        }
    }

    fn container(d: &Deployment) -> &Container {
        &d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
            .containers[0]
    }

    #[test]
    fn defaults_follow_the_crd() {
        let spec = default_spec();
        assert_eq!(spec.port, 40000);
        assert_eq!(spec.service.type_, ServiceType::LoadBalancer);
        assert_eq!(spec.service.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(spec.access_mode, AccessMode::AllowList);
    }

    #[test]
    fn config_maps_hold_each_key_once_in_its_shard_in_the_relay_file_format() {
        let k1: PublicKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
            .parse()
            .expect("key");
        let k2: PublicKey = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
            .parse()
            .expect("key");
        let shards = config_maps(&relay(default_spec()), &[k1, k2, k1]);
        assert_eq!(
            shards.len(),
            KEY_SHARDS,
            "empty shards too: the volume needs them"
        );
        let mut all = Vec::new();
        for (n, cm) in shards.iter().enumerate() {
            let name = keys_config_map_name("edge", n);
            assert_eq!(cm.metadata.name.as_deref(), Some(name.as_str()));
            assert_eq!(cm.metadata.owner_references.as_ref().map(Vec::len), Some(1));
            let text = &cm.data.as_ref().expect("data")[&key_file(n)];
            let parsed = wpex_proto::keyfile::parse(std::path::Path::new(&key_file(n)), text)
                .expect("parses");
            assert!(parsed.iter().all(|k| shard_of(k) == n), "shard {n}");
            let digest = cm.metadata.annotations.as_ref().expect("annotations");
            assert_eq!(
                digest[KEYS_DIGEST_ANNOTATION],
                keys_digest(text),
                "shard {n}"
            );
            all.extend(parsed);
        }
        all.sort();
        let mut expected = vec![k1, k2];
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn keys_spread_over_the_shards_evenly_enough_for_100k_in_one_relay() {
        let mut held = [0usize; KEY_SHARDS];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100_000 {
            // A real public key's bytes look random; splitmix64 stands in for them.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            held[shard_of(&PublicKey(key))] += 1;
        }
        let fullest = held.iter().max().copied().unwrap_or_default();
        assert!(fullest < SHARD_KEYS / 2, "{held:?}");
    }

    #[test]
    fn deployment_runs_one_hardened_replica_with_the_keys_mounted_whole() {
        let defaults = PodDefaults {
            image: "wpex:test".into(),
            pull_secrets: vec!["registry".into()],
        };
        let d = deployment(&relay(default_spec()), &defaults);
        let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        assert_eq!(
            pod.and_then(|p| p.image_pull_secrets.clone()),
            Some(vec![LocalObjectReference {
                name: "registry".into()
            }])
        );
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            Some("Recreate")
        );
        let c = container(&d);
        assert_eq!(c.image.as_deref(), Some("wpex:test"));
        let args = c.args.as_ref().expect("args").join(" ");
        assert!(args.contains("--port 40000"), "{args}");
        assert!(args.contains("--allow-file /etc/wpex/keys"), "{args}");
        let volume = &pod.and_then(|p| p.volumes.clone()).expect("volumes")[0];
        let sources = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.clone())
            .expect("a projected volume");
        let names: Vec<String> = sources
            .iter()
            .filter_map(|s| Some(s.config_map.as_ref()?.name.clone()))
            .collect();
        let wanted: Vec<String> = (0..KEY_SHARDS)
            .map(|n| keys_config_map_name("edge", n))
            .collect();
        assert_eq!(names, wanted, "every shard, in one directory");
        assert!(args.contains("--metrics-addr 0.0.0.0:9090"), "{args}");
        assert!(!args.contains("--broadcast-rate"), "{args}");
        let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(mount.mount_path, KEYS_MOUNT);
        assert_eq!(mount.sub_path, None, "subPath would freeze the file");
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    }

    #[test]
    fn open_mode_passes_no_key_flags_and_mounts_nothing() {
        let mut spec = default_spec();
        spec.access_mode = AccessMode::Open;
        spec.broadcast_rate = Some(3);
        spec.log_level = LogLevel::Debug;
        spec.image = Some("own/wpex:1".into());
        let defaults = PodDefaults {
            image: "wpex:test".into(),
            pull_secrets: Vec::new(),
        };
        let d = deployment(&relay(spec), &defaults);
        let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        assert_eq!(pod.and_then(|p| p.image_pull_secrets.clone()), None);
        let c = container(&d);
        let args = c.args.as_ref().expect("args").join(" ");
        assert!(!args.contains("--allow"), "{args}");
        assert!(
            args.contains("--broadcast-rate 3") && args.contains("--debug"),
            "{args}"
        );
        assert_eq!(c.image.as_deref(), Some("own/wpex:1"));
        assert!(c.volume_mounts.is_none());
    }

    #[test]
    fn service_is_udp_with_the_requested_exposure() {
        let mut spec = default_spec();
        spec.service = RelayService {
            type_: ServiceType::NodePort,
            node_port: Some(31820),
            annotations: BTreeMap::from([("a".into(), "b".into())]),
            external_traffic_policy: TrafficPolicy::Local,
        };
        let s = service(&relay(spec.clone()));
        let ss = s.spec.as_ref().expect("spec");
        assert_eq!(ss.type_.as_deref(), Some("NodePort"));
        assert_eq!(ss.external_traffic_policy.as_deref(), Some("Local"));
        let port = &ss.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.protocol.as_deref(), port.port, port.node_port),
            (Some("UDP"), 40000, Some(31820))
        );
        assert_eq!(
            s.metadata.annotations.as_ref().map(|a| a["a"].as_str()),
            Some("b")
        );

        spec.service.type_ = ServiceType::ClusterIp;
        let s = service(&relay(spec));
        let ss = s.spec.as_ref().expect("spec");
        assert_eq!(ss.external_traffic_policy, None, "invalid on ClusterIP");
        assert_eq!(ss.ports.as_ref().expect("ports")[0].node_port, None);
    }
}
