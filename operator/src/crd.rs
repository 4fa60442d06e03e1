//! The custom resources: `WireGuardRelay` and `WireGuardPeerKey` (group `wpex.io`).

// `derive(KubeSchema)` copies each struct it is on, `pub` and spans included, into a
// `…Validated` struct inside its `json_schema`; that function-local copy is what
// `unreachable_pub` reports, at the original's span. The structs themselves are reachable (as
// `wpex_operator::crd::…`, and as the `spec`/`status` of the `CustomResource` types) and must
// stay public. `expect`, not `allow`: once kube-derive stops this, the lint says so.
#![expect(
    unreachable_pub,
    reason = "derive(KubeSchema)'s function-local copies of the public spec and status structs"
)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A WireGuard relay: a Deployment running `wpex`, its key list and a UDP Service.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wpex.io",
    version = "v1alpha1",
    kind = "WireGuardRelay",
    namespaced,
    shortname = "wgr",
    category = "wpex",
    doc = "A WireGuard relay that peers behind NAT meet at: the operator runs `wpex` in a Deployment, with the allow-list of this relay's accepted WireGuardPeerKeys mounted from a ConfigMap, behind a UDP Service. The relay forwards WireGuard packets by session index and can neither read nor alter them.",
    validation = kube::core::Rule::new(RELAY_NAME_RULE).message("a relay name is also its Service's name: at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"),
    status = "WireGuardRelayStatus",
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keys"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardRelaySpec {
    /// UDP port peers connect to, on the Service and in the pod (default 40000).
    #[serde(default = "default_port")]
    // A plain int32 in the schema: API servers warn about unknown formats such as uint16.
    #[schemars(with = "i32")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: u16,
    /// How the relay is exposed.
    #[serde(default)]
    pub service: RelayService,
    /// Broadcast copies of handshake initiations per second (burst 5x); unset or 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0 && self <= 4294967295").message("broadcastRate must be between 0 and 4294967295"))]
    pub broadcast_rate: Option<u32>,
    /// AllowList (default) lets in only this relay's accepted WireGuardPeerKeys; no keys means
    /// nobody. Open lets anyone in.
    #[serde(default)]
    pub access_mode: AccessMode,
    /// Relay image; defaults to the operator's `--relay-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The `host:port` peers should put in `Endpoint =`, used verbatim in status and in the
    /// `[Peer]` hints, for relays reached through NAT, DNS or a proxy the cluster cannot see.
    /// Unset: read from the Service (and the relay pod's node, for NodePort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(ENDPOINT_RULE).message("endpoint must be host:port, with an IPv6 host in brackets"))]
    pub endpoint: Option<String>,
    /// CPU and memory of the relay container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the relay pod must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the relay pod tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The relay's log level: info (default) or debug.
    #[serde(default)]
    pub log_level: LogLevel,
}

/// A relay's name is its Service's name, a DNS-1035 label.
pub const RELAY_NAME_RULE: &str =
    "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";

/// `host:port`: a DNS name or IPv4 address, or an IPv6 address in brackets; a 1-5 digit port.
pub const ENDPOINT_RULE: &str = "self.matches('^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\\\\[[0-9A-Fa-f:.]+\\\\]):[0-9]{1,5}$') && int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535";

/// What an empty spec means, as the serde defaults say.
impl Default for WireGuardRelaySpec {
    fn default() -> Self {
        Self {
            port: default_port(),
            service: RelayService::default(),
            broadcast_rate: None,
            access_mode: AccessMode::default(),
            image: None,
            endpoint: None,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            log_level: LogLevel::default(),
        }
    }
}

fn default_port() -> u16 {
    40000
}

/// The UDP Service in front of the relay.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelayService {
    /// LoadBalancer (default), NodePort, or ClusterIP for peers inside the cluster.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Fixed node port for NodePort and LoadBalancer Services; allocated when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    /// Annotations on the Service, for example a cloud load balancer's settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Local (default) keeps the peers' real source addresses, which the relay routes on.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
}

/// How the relay's Service is exposed.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// A load balancer, the default; peers use its ingress addresses.
    #[default]
    LoadBalancer,
    /// A port on every node; peers use the node that runs the relay pod.
    NodePort,
    /// Only the cluster IP, for peers inside the cluster.
    #[serde(rename = "ClusterIP")]
    ClusterIp,
}

impl ServiceType {
    /// The Service `type` as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIp => "ClusterIP",
        }
    }
}

/// The Service's externalTrafficPolicy.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Only nodes running the relay pod take its traffic, keeping peers' source addresses.
    #[default]
    Local,
    /// Any node takes its traffic and forwards it with SNAT, which may hide peers' addresses.
    Cluster,
}

impl TrafficPolicy {
    /// The `externalTrafficPolicy` as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Local => "Local",
            TrafficPolicy::Cluster => "Cluster",
        }
    }
}

/// Who may use the relay.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    /// Only the relay's accepted WireGuardPeerKeys; no keys means nobody. The default.
    #[default]
    AllowList,
    /// Anyone; the relay gets no key file.
    Open,
}

/// The relay's log level.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// The relay's usual logs; the default.
    #[default]
    Info,
    /// Also the relay's debug logs (`--debug`).
    Debug,
}

/// What the operator observed of a relay.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardRelayStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The address peers put in `Endpoint =`, once known: `spec.endpoint` if set, else the
    /// first of `endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Every address the relay answers on: each load balancer ingress (both families on a
    /// dual-stack Service), or the node running the relay pod for NodePort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Accepted peer keys in the relay's allow-list.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub keys: u32,
    /// Ready: the relay pod is available and peers have an endpoint.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One WireGuard peer allowed through a relay in the same namespace.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wpex.io",
    version = "v1alpha1",
    kind = "WireGuardPeerKey",
    namespaced,
    shortname = "wgpk",
    category = "wpex",
    doc = "One WireGuard public key allowed through a WireGuardRelay in the same namespace. The relay's allow-list follows the accepted keys within seconds, without restarting the relay. Status says whether the key was accepted, where peers connect, and when the key last completed a handshake through the relay.",
    status = "WireGuardPeerKeyStatus",
    printcolumn = r#"{"name":"Relay","type":"string","jsonPath":".spec.relay"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name":"Handshake","type":"date","jsonPath":".status.lastHandshake"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardPeerKeySpec {
    /// Name of a WireGuardRelay in the same namespace. Immutable: moving a key to another relay
    /// is a delete and a create, so the old relay drops it at once.
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("relay must name a WireGuardRelay"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("relay is immutable; delete this key and create one for the other relay"))]
    pub relay: String,
    /// The peer's WireGuard public key, as `wg pubkey` prints it (base64 of 32 bytes).
    #[x_kube(validation = kube::core::Rule::new(PUBLIC_KEY_RULE).message("publicKey must be the base64 of exactly 32 bytes, as `wg pubkey` prints"))]
    pub public_key: String,
    /// Keeps the resource but takes the key out of the relay's allow-list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// 32 bytes are 43 base64 digits and one `=`; the last digit carries 4 bits, so it is one of
/// the 16 digits whose low two bits are zero.
pub const PUBLIC_KEY_RULE: &str = "self.matches('^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$')";

/// What the operator observed of a peer key.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardPeerKeyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The relay's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A ready-to-paste `[Peer]` section for the other side of this peer's tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_config: Option<String>,
    /// When this key last completed a handshake through the relay, as the relay pod reports
    /// it. Unset until the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<Time>,
    /// Accepted: the key is in the relay's allow-list; the reason says why not otherwise.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
