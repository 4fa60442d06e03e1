//! wpex-operator: runs wpex relays on Kubernetes from `WireGuardRelay` and `WireGuardPeerKey`.
//!
//! - [`crd`]: the custom resources.
//! - [`admission`]: which peer keys a relay accepts (pure domain logic, no Kubernetes types).
//! - [`resources`]: the ConfigMap, Deployment and Service a relay owns (pure builders).
//! - [`endpoint`]: the address peers use, read from the Service.
//! - [`controller`]: the reconcilers, their steps and how they are watched.
//! - [`apply`]: server-side apply of a relay's children.
//! - [`owners`]: which children and pods are a relay's, by owner UID rather than by label.
//! - [`status`]: conditions and status writes.
//! - [`handshakes`]: each peer key's last handshake, scraped from its relay pod into status.
//! - [`http`]: plain-HTTP GETs (relay metrics, `wpex-operator probe`).

#![warn(unreachable_pub, missing_docs)]

pub mod admission;
pub mod apply;
pub mod controller;
pub mod crd;
pub mod endpoint;
pub mod error;
pub mod handshakes;
pub mod http;
pub mod judged;
pub mod metrics;
pub mod owners;
pub mod resources;
pub mod status;

use kube::CustomResourceExt;

/// Each CRD as `(file name, YAML document)`, as committed under `crds/`.
pub fn crd_documents() -> Result<Vec<(String, String)>, serde_norway::Error> {
    [crd::WireGuardRelay::crd(), crd::WireGuardPeerKey::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), serde_norway::to_string(&crd)?))
        })
        .collect()
}
