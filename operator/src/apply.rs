//! Apply: a relay's children, written by server-side apply under the operator's field manager.
//! The builders make the relay each child's controller owner, so the garbage collector deletes
//! them with it and the relay controller is woken by their changes. A name held by an object
//! the relay does not control is left alone: the operator adopts nothing.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::owners::{self, Conflict, Holder};
use crate::resources::{self, Children, Relay};

/// The field manager the operator writes as: relays' children, the reconcilers' status and
/// its Lease.
pub const FIELD_MANAGER: &str = "wpex-operator";

/// The annotation on relay pods naming the version of the key ConfigMaps they should mount.
pub const KEYS_VERSION_ANNOTATION: &str = "wpex.io/keys-version";

/// Server-side apply as the operator, taking over fields another manager may have set: for
/// the relays' and keys' status, and children the relay already controls.
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

/// The apply step's outcome.
pub(crate) enum Outcome {
    /// Every child was applied.
    Applied(Box<Applied>),
    /// Objects the relay does not control hold these child names; nothing was written.
    Conflicts(Vec<Conflict>),
}

/// Applies a relay's children, unless another object holds one of their names. The key
/// ConfigMaps first, so a new pod mounts the current keys; then the running pods are told the
/// keys changed, before the Deployment and the Service.
pub(crate) async fn children(
    client: &Client,
    relay: &Relay,
    children: &Children,
) -> Result<Outcome, Error> {
    let uid = relay.owner.uid.as_str();
    // Metadata only: with 100,000 keys the shards hold 4.5 MB, read back on every reconcile.
    // All reads at once: one after another, they were most of a reconcile's time.
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &relay.namespace);
    let shard_reads = children.config_maps.iter().map(|shard| {
        let name = shard.metadata.name.as_deref().unwrap_or_default();
        let config_maps = &config_maps;
        async move {
            config_maps
                .get_metadata_opt(name)
                .await
                .map(|found| found.map(|m| m.metadata))
                .map_err(|source| Error::Read {
                    what: "an existing key shard",
                    source,
                })
        }
    });
    let (shards, deployment, service) = futures::try_join!(
        futures::future::try_join_all(shard_reads),
        existing(client, relay, &children.deployment),
        existing(client, relay, &children.service),
    )?;
    let shard_holders: Vec<Holder> = children
        .config_maps
        .iter()
        .zip(&shards)
        .map(|(wanted, found)| {
            let name = wanted.metadata.name.as_deref().unwrap_or_default();
            owners::holder("ConfigMap", name, found.as_ref(), uid)
        })
        .collect();
    let deployment_held = holder(&children.deployment, deployment.as_ref(), uid);
    let service_held = holder(&children.service, service.as_ref(), uid);
    let conflicts: Vec<Conflict> = shard_holders
        .iter()
        .chain([&deployment_held, &service_held])
        .filter_map(|h| match h {
            Holder::Other(c) => Some(c.clone()),
            Holder::Nobody | Holder::Relay => None,
        })
        .collect();
    if !conflicts.is_empty() {
        return Ok(Outcome::Conflicts(conflicts));
    }
    // A shard that already holds its keys is not written again: with many keys, most
    // reconciles change one shard or none.
    let digest = |m: &ObjectMeta| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(resources::KEYS_DIGEST_ANNOTATION))
            .cloned()
    };
    // An edit by anyone else (`kubectl edit`, say) shows as another field manager.
    let only_ours = |m: &ObjectMeta| {
        m.managed_fields
            .iter()
            .flatten()
            .all(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
    };
    let mut versions = Vec::with_capacity(shards.len());
    for ((wanted, found), held) in children.config_maps.iter().zip(shards).zip(&shard_holders) {
        let stored = match found {
            Some(found)
                if *held == Holder::Relay
                    && digest(&found) == digest(&wanted.metadata)
                    && only_ours(&found) =>
            {
                found
            }
            _ => {
                let held = *held == Holder::Relay;
                object(client, &relay.namespace, wanted, held)
                    .await?
                    .metadata
            }
        };
        versions.push(stored.resource_version.unwrap_or_else(|| "-".to_owned()));
    }
    let pods = relay_pods(client, relay, deployment.as_ref()).await?;
    refresh_key_volumes(client, relay, &pods, &versions.join(".")).await?;
    // Independent of each other, so applied at once, as they were read. The former key
    // ConfigMap goes only once the Deployment mounts the shards.
    let (deployment, service) = futures::try_join!(
        object(
            client,
            &relay.namespace,
            &children.deployment,
            deployment_held == Holder::Relay
        ),
        object(
            client,
            &relay.namespace,
            &children.service,
            service_held == Holder::Relay
        ),
    )?;
    retire_legacy_keys(client, relay).await?;
    Ok(Outcome::Applied(Box::new(Applied {
        pods,
        deployment,
        service,
    })))
}

/// Deletes the single key ConfigMap of operators before the shards, if the relay controls it:
/// its pods now mount the shards.
async fn retire_legacy_keys(client: &Client, relay: &Relay) -> Result<(), Error> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), &relay.namespace);
    let name = resources::legacy_keys_config_map_name(&relay.name);
    let found = api
        .get_metadata_opt(&name)
        .await
        .map_err(|source| Error::Read {
            what: "the relay's former key ConfigMap",
            source,
        })?;
    let Some(found) = found else {
        return Ok(());
    };
    let ours = owners::holder("ConfigMap", &name, Some(&found.metadata), &relay.owner.uid)
        == Holder::Relay;
    if ours {
        match api.delete(&name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    kind: "ConfigMap".to_owned(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Who holds `child`'s name, from what the API server has under it.
fn holder<K: Resource<DynamicType = ()>>(
    child: &K,
    existing: Option<&K>,
    relay_uid: &str,
) -> Holder {
    owners::holder(
        &K::kind(&()),
        child.meta().name.as_deref().unwrap_or_default(),
        existing.map(Resource::meta),
        relay_uid,
    )
}

/// The object the API server holds under `child`'s name, if any.
async fn existing<K>(client: &Client, relay: &Relay, child: &K) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = child.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), &relay.namespace)
        .get_opt(&name)
        .await
        .map_err(|source| Error::Read {
            what: "an existing child",
            source,
        })
}

/// Server-side applies `obj` in `namespace` and returns what the API server stored. Fields
/// another manager set are taken over (`force`) only on an object the relay already controls.
async fn object<K>(client: &Client, namespace: &str, obj: &K, force: bool) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = if force {
        params()
    } else {
        PatchParams::apply(FIELD_MANAGER)
    };
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })
}

/// The relay's pods, newest first: those its Deployment (if there is one yet) runs through a
/// ReplicaSet. Labels select the candidates; owners decide.
async fn relay_pods(
    client: &Client,
    relay: &Relay,
    deployment: Option<&Deployment>,
) -> Result<Vec<Pod>, Error> {
    let Some(deployment) = deployment else {
        return Ok(Vec::new());
    };
    let selected =
        ListParams::default().labels(&resources::selector(&resources::labels(&relay.name)));
    let read = |what| move |source| Error::Read { what, source };
    let pods = Api::<Pod>::namespaced(client.clone(), &relay.namespace)
        .list(&selected)
        .await
        .map_err(read("relay Pods"))?
        .items;
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), &relay.namespace)
        .list(&selected)
        .await
        .map_err(read("relay ReplicaSets"))?
        .items;
    let mut pods: Vec<Pod> =
        owners::relay_pods(&relay.owner.uid, &relay.name, [deployment], &sets, &pods)
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
    pods.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    Ok(pods)
}

/// kubelet refreshes a mounted ConfigMap when it syncs the pod, which by default happens once a
/// minute; an update of the pod object makes it sync at once. So every relay pod is annotated
/// with the key ConfigMaps' version. Pods only: a change to the Deployment's pod template would
/// restart the relay.
async fn refresh_key_volumes(
    client: &Client,
    relay: &Relay,
    pods: &[Pod],
    version: &str,
) -> Result<(), Error> {
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
