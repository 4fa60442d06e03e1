//! Where peers reach a relay, read from its Service, and for NodePort from the node that runs
//! the relay pod.

use k8s_openapi::api::core::v1::{Node, Service};

use crate::crd::ServiceType;

fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where the relay pod runs: its node, if readable, and the pod's `hostIP`s as a fallback.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayNode<'a> {
    /// The node, unless no pod is on one yet or the operator may not read Nodes.
    pub node: Option<&'a Node>,
    /// The pod's host IPs (its node's InternalIPs), used when the node has no address to offer.
    pub host_ips: &'a [String],
}

/// A node's addresses peers can use: its external IPs if it has any, else its internal IPs
/// (both families on a dual-stack node).
fn node_addresses(node: &Node) -> Vec<String> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    ["ExternalIP", "InternalIP"]
        .iter()
        .map(|kind| {
            addresses
                .iter()
                .filter(|a| a.type_ == *kind)
                .map(|a| a.address.clone())
                .collect::<Vec<_>>()
        })
        .find(|found| !found.is_empty())
        .unwrap_or_default()
}

/// Every `host:port` peers can put in `Endpoint =`, best first; empty until the Service has an
/// address (and, for NodePort, until the relay pod is on a node).
pub fn endpoints(kind: ServiceType, service: &Service, at: RelayNode<'_>) -> Vec<String> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(port) = spec.ports.as_ref().and_then(|p| p.first()) else {
        return Vec::new();
    };
    let (hosts, port): (Vec<String>, Option<i32>) = match kind {
        ServiceType::LoadBalancer => {
            let ingress = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_deref())
                .unwrap_or_default();
            let hosts = ingress
                .iter()
                .filter_map(|i| i.ip.as_ref().or(i.hostname.as_ref()).cloned())
                .collect();
            (hosts, Some(port.port))
        }
        ServiceType::NodePort => {
            let mut hosts = at.node.map(node_addresses).unwrap_or_default();
            if hosts.is_empty() {
                hosts = at.host_ips.to_vec();
            }
            (hosts, port.node_port)
        }
        ServiceType::ClusterIp => {
            let hosts = spec
                .cluster_ips
                .clone()
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default()
                .into_iter()
                .filter(|ip| ip != "None")
                .collect();
            (hosts, Some(port.port))
        }
    };
    let Some(port) = port else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for host in hosts {
        let e = host_port(&host, port);
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

/// The `[Peer]` section other peers paste to reach the peer holding `public_key`.
pub fn peer_config(public_key: &str, endpoint: &str) -> String {
    format!(
        "[Peer]\nPublicKey = {public_key}\nEndpoint = {endpoint}\nPersistentKeepalive = 25\n# AllowedIPs = <this peer's tunnel address>/32\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeStatus, ServicePort, ServiceSpec,
        ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(node_port: Option<i32>, ingress: Vec<LoadBalancerIngress>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.3.4".into()),
                ports: Some(vec![ServicePort {
                    port: 40000,
                    node_port,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        }
    }

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn load_balancer_endpoints_are_every_ingress_address() {
        let none = RelayNode::default();
        assert!(endpoints(ServiceType::LoadBalancer, &svc(Some(31000), vec![]), none).is_empty());
        let ip = |a: &str| LoadBalancerIngress {
            ip: Some(a.into()),
            ..LoadBalancerIngress::default()
        };
        let host = LoadBalancerIngress {
            hostname: Some("relay.example".into()),
            ..LoadBalancerIngress::default()
        };
        let dual = svc(None, vec![ip("203.0.113.9"), ip("2001:db8::9"), host]);
        assert_eq!(
            endpoints(ServiceType::LoadBalancer, &dual, none),
            [
                "203.0.113.9:40000",
                "[2001:db8::9]:40000",
                "relay.example:40000"
            ]
        );
    }

    #[test]
    fn node_port_endpoint_is_the_relay_pods_node_external_first() {
        let service = svc(Some(31820), vec![]);
        let external = node(
            "b",
            &[
                ("InternalIP", "192.0.2.2"),
                ("ExternalIP", "198.51.100.2"),
                ("ExternalIP", "2001:db8::2"),
            ],
        );
        let at = RelayNode {
            node: Some(&external),
            host_ips: &[],
        };
        assert_eq!(
            endpoints(ServiceType::NodePort, &service, at),
            ["198.51.100.2:31820", "[2001:db8::2]:31820"]
        );
        let internal = node("a", &[("InternalIP", "192.0.2.1"), ("Hostname", "a")]);
        let at = RelayNode {
            node: Some(&internal),
            host_ips: &[],
        };
        assert_eq!(
            endpoints(ServiceType::NodePort, &service, at),
            ["192.0.2.1:31820"]
        );
        // The node cannot be read (no RBAC for Nodes): the pod's hostIP still names it.
        let host_ips = ["192.0.2.7".to_owned()];
        let at = RelayNode {
            node: None,
            host_ips: &host_ips,
        };
        assert_eq!(
            endpoints(ServiceType::NodePort, &service, at),
            ["192.0.2.7:31820"]
        );
        // No pod on a node yet, or no node port allocated yet.
        assert!(endpoints(ServiceType::NodePort, &service, RelayNode::default()).is_empty());
        let at = RelayNode {
            node: Some(&internal),
            host_ips: &[],
        };
        assert!(endpoints(ServiceType::NodePort, &svc(None, vec![]), at).is_empty());
    }

    #[test]
    fn cluster_ip_endpoint_and_peer_hint() {
        assert_eq!(
            endpoints(
                ServiceType::ClusterIp,
                &svc(None, vec![]),
                RelayNode::default()
            ),
            ["10.96.3.4:40000"]
        );
        let hint = peer_config("KEY=", "10.96.3.4:40000");
        assert!(
            hint.contains("Endpoint = 10.96.3.4:40000\n")
                && hint.contains("PersistentKeepalive = 25\n"),
            "{hint}"
        );
        assert!(hint.starts_with("[Peer]\nPublicKey = KEY=\n"), "{hint}");
    }
}
