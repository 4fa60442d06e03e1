//! Apply: a relay's children, written by server-side apply under the operator's field manager.
//! The builders make the relay each child's controller owner, so the garbage collector deletes
//! them with it and the relay controller is woken by their changes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::resources::{self, Children, Relay};

/// The field manager the operator writes as: relays' children, the reconcilers' status and
/// its Lease.
pub const FIELD_MANAGER: &str = "wpex-operator";

/// The annotation on relay pods naming the version of the key ConfigMap they should mount.
pub const KEYS_VERSION_ANNOTATION: &str = "wpex.io/keys-version";

/// Server-side apply as the operator, taking over fields another manager may have set.
pub(crate) fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// What the API server holds after a relay's children were applied, for the status step.
pub(crate) struct Applied {
    /// The relay's pods, newest first, as listed before the Deployment was applied.
    pub pods: Vec<Pod>,
    pub deployment: Deployment,
    pub service: Service,
}

/// Applies a relay's children. The ConfigMap first, so a new pod mounts the current keys; then
/// the running pods are told the keys changed, before the Deployment and the Service.
pub(crate) async fn children(
    client: &Client,
    relay: &Relay,
    children: &Children,
) -> Result<Applied, Error> {
    let keys = object(client, &relay.namespace, &children.config_map).await?;
    let pods = relay_pods(client, relay).await?;
    refresh_key_volumes(client, relay, &pods, &keys).await?;
    let deployment = object(client, &relay.namespace, &children.deployment).await?;
    let service = object(client, &relay.namespace, &children.service).await?;
    Ok(Applied {
        pods,
        deployment,
        service,
    })
}

/// Server-side applies `obj` in `namespace` and returns what the API server stored.
async fn object<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })
}

/// The relay's pods, newest first, from a label-selected list.
async fn relay_pods(client: &Client, relay: &Relay) -> Result<Vec<Pod>, Error> {
    let selector = resources::selector(&resources::labels(&relay.name));
    let mut pods = Api::<Pod>::namespaced(client.clone(), &relay.namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Read {
            what: "relay Pods",
            source,
        })?
        .items;
    pods.retain(|p| p.metadata.deletion_timestamp.is_none());
    pods.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    Ok(pods)
}

/// kubelet refreshes a mounted ConfigMap when it syncs the pod, which by default happens once a
/// minute; an update of the pod object makes it sync at once. So every relay pod is annotated
/// with the key ConfigMap's version. Pods only: a change to the Deployment's pod template would
/// restart the relay.
async fn refresh_key_volumes(
    client: &Client,
    relay: &Relay,
    pods: &[Pod],
    keys: &ConfigMap,
) -> Result<(), Error> {
    let Some(version) = keys.metadata.resource_version.as_deref() else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &relay.namespace);
    for pod in pods {
        if pod
            .annotations()
            .get(KEYS_VERSION_ANNOTATION)
            .map(String::as_str)
            == Some(version)
        {
            continue;
        }
        let name = pod.name_any();
        let patch = serde_json::json!({
            "metadata": {"annotations": {KEYS_VERSION_ANNOTATION: version}}
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Gone since the list: its replacement mounts the current keys anyway.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    kind: "Pod".to_owned(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}
