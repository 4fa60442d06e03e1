//! Who owns what. Labels are a hint anyone who may create objects in a namespace can copy, so
//! the operator trusts owner references by UID: a child is the relay's only if the relay is its
//! controller, and a pod is a relay pod only if its owner chain (ReplicaSet, then Deployment)
//! leads to the relay.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Who holds a child's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No object has the name yet.
    Nobody,
    /// The relay is its controller: ours to apply.
    Relay,
    /// Something else: never written, never adopted.
    Other(Conflict),
}

/// A child name held by an object the relay does not control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The object's kind, such as `Service`.
    pub kind: String,
    /// Its name, the one the relay's child needs.
    pub name: String,
    /// Its controller, as `Kind/name`, if it has one.
    pub controller: Option<String>,
}

impl Conflict {
    /// What the relay's `NameConflict` condition says.
    pub fn message(&self) -> String {
        let held = match &self.controller {
            Some(c) => format!("controlled by {c}"),
            None => "not controlled by this relay".to_owned(),
        };
        format!(
            "{} {} already exists, {held}; the operator leaves it untouched. Rename the relay or remove the {}",
            self.kind, self.name, self.kind
        )
    }
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true))
}

/// Who holds the name of a child of kind `kind`, given what the API server has under it
/// (`existing`) and the relay's UID.
pub fn holder(kind: &str, name: &str, existing: Option<&ObjectMeta>, relay_uid: &str) -> Holder {
    let Some(meta) = existing else {
        return Holder::Nobody;
    };
    match controller(meta) {
        Some(c) if c.uid == relay_uid => Holder::Relay,
        other => Holder::Other(Conflict {
            kind: kind.to_owned(),
            name: name.to_owned(),
            controller: other.map(|c| format!("{}/{}", c.kind, c.name)),
        }),
    }
}

/// Whether `meta`'s controller is the object with this UID.
fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller(meta).is_some_and(|c| c.uid == uid)
}

/// The relay's pods among `pods`: those whose controller is a ReplicaSet of `replicasets`
/// whose controller is the relay's Deployment, the one named `deployment` among `deployments`
/// that the relay (`relay_uid`) controls. Order is kept.
pub fn relay_pods<'a, 'd>(
    relay_uid: &str,
    deployment: &str,
    deployments: impl IntoIterator<Item = &'d Deployment>,
    replicasets: &[ReplicaSet],
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<&'a Pod> {
    let Some(deployment_uid) = deployments
        .into_iter()
        .find(|d| {
            d.metadata.name.as_deref() == Some(deployment) && controlled_by(&d.metadata, relay_uid)
        })
        .and_then(|d| d.metadata.uid.as_deref())
    else {
        return Vec::new();
    };
    let sets: Vec<&str> = replicasets
        .iter()
        .filter(|rs| controlled_by(&rs.metadata, deployment_uid))
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    pods.into_iter()
        .filter(|p| controller(&p.metadata).is_some_and(|c| sets.contains(&c.uid.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(name: &str, uid: &str, owner: Option<(&str, &str, &str)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(uid.to_owned()),
            owner_references: owner.map(|(kind, name, uid)| {
                vec![OwnerReference {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_name_held_by_anything_but_the_relay_is_a_conflict() {
        assert_eq!(holder("Service", "edge", None, "r1"), Holder::Nobody);
        let ours = owned("edge", "s1", Some(("WireGuardRelay", "edge", "r1")));
        assert_eq!(holder("Service", "edge", Some(&ours), "r1"), Holder::Relay);
        // The same name, controlled by a relay of that name that was deleted and made again.
        let Holder::Other(old) = holder("Service", "edge", Some(&ours), "r2") else {
            panic!("another relay's Service adopted");
        };
        assert_eq!(old.controller.as_deref(), Some("WireGuardRelay/edge"));
        let mut plain = owned("edge", "s1", None);
        let Holder::Other(c) = holder("Service", "edge", Some(&plain), "r1") else {
            panic!("an ownerless Service adopted");
        };
        assert!(
            c.message().starts_with("Service edge already exists"),
            "{}",
            c.message()
        );
        // An owner that is not the controller does not make it ours.
        plain.owner_references = Some(vec![OwnerReference {
            uid: "r1".into(),
            controller: None,
            ..OwnerReference::default()
        }]);
        assert!(matches!(
            holder("Service", "edge", Some(&plain), "r1"),
            Holder::Other(_)
        ));
    }

    #[test]
    fn relay_pods_are_those_whose_owner_chain_leads_to_the_relay() {
        let deployment = |uid: &str, owner: &str| Deployment {
            metadata: owned("edge", uid, Some(("WireGuardRelay", "edge", owner))),
            ..Deployment::default()
        };
        let rs = |uid: &str, owner: &str| ReplicaSet {
            metadata: owned("edge-abc", uid, Some(("Deployment", "edge", owner))),
            ..ReplicaSet::default()
        };
        let pod = |name: &str, owner: Option<&str>| Pod {
            metadata: owned(name, name, owner.map(|o| ("ReplicaSet", "edge-abc", o))),
            ..Pod::default()
        };
        let deployments = [deployment("d1", "r1")];
        let sets = [rs("rs1", "d1"), rs("rs-forged", "d-other")];
        let pods = [
            pod("real", Some("rs1")),
            pod("labels-only", None),
            pod("forged-rs", Some("rs-forged")),
            pod("unknown-rs", Some("rs-gone")),
        ];
        let names = |found: Vec<&Pod>| -> Vec<String> {
            found
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect()
        };
        assert_eq!(
            names(relay_pods("r1", "edge", &deployments, &sets, &pods)),
            ["real"]
        );
        // Another relay's UID, or a Deployment of another name: nothing.
        assert!(relay_pods("r2", "edge", &deployments, &sets, &pods).is_empty());
        assert!(relay_pods("r1", "other", &deployments, &sets, &pods).is_empty());
    }
}
