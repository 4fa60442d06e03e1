//! The custom resources: `WireGuardRelay` and `WireGuardPeerKey` (group `wpex.io`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "wpex.io";

/// A WireGuard relay: a Deployment running `wpex`, its key list and a UDP Service.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wpex.io",
    version = "v1alpha1",
    kind = "WireGuardRelay",
    namespaced,
    shortname = "wgr",
    status = "WireGuardRelayStatus",
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keys"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardRelaySpec {
    /// UDP port peers connect to, on the Service and in the pod.
    #[serde(default = "default_port")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("port must be between 1 and 65535"))]
    pub port: u16,
    /// How the relay is exposed.
    #[serde(default)]
    pub service: RelayService,
    /// Broadcast copies of handshake initiations per second (burst 5x); unset or 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_rate: Option<u32>,
    /// AllowList (default) lets in only this relay's accepted WireGuardPeerKeys; no keys means
    /// nobody. Open lets anyone in.
    #[serde(default)]
    pub access_mode: AccessMode,
    /// Relay image; defaults to the operator's `--relay-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub log_level: LogLevel,
}

fn default_port() -> u16 {
    40000
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelayService {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Fixed node port for NodePort and LoadBalancer Services; allocated when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Local (default) keeps the peers' real source addresses, which the relay routes on.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    #[serde(rename = "ClusterIP")]
    ClusterIp,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIp => "ClusterIP",
        }
    }
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    #[default]
    Local,
    Cluster,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Local => "Local",
            TrafficPolicy::Cluster => "Cluster",
        }
    }
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    #[default]
    AllowList,
    Open,
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    #[default]
    Info,
    Debug,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardRelayStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The address peers put in `Endpoint =`, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Accepted peer keys in the relay's allow-list.
    #[serde(default)]
    pub keys: u32,
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
    status = "WireGuardPeerKeyStatus",
    printcolumn = r#"{"name":"Relay","type":"string","jsonPath":".spec.relay"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
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

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardPeerKeyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The relay's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A ready-to-paste `[Peer]` section for the other side of this peer's tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_config: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
