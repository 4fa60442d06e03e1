//! Where peers reach a relay, read from its Service (and the nodes, for NodePort).

use k8s_openapi::api::core::v1::{Node, Service};

use crate::crd::ServiceType;

fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A node's address peers can use: an external IP if it has one, else its internal IP.
fn node_address(node: &Node) -> Option<String> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    ["ExternalIP", "InternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .find(|a| a.type_ == *kind)
            .map(|a| a.address.clone())
    })
}

/// The `host:port` peers put in `Endpoint =`, if the Service has one yet.
pub fn endpoint(kind: ServiceType, service: &Service, nodes: &[Node]) -> Option<String> {
    let port = service.spec.as_ref()?.ports.as_ref()?.first()?;
    match kind {
        ServiceType::LoadBalancer => {
            let ingress = service
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?;
            let first = ingress.first()?;
            let host = first.ip.as_ref().or(first.hostname.as_ref())?;
            Some(host_port(host, port.port))
        }
        ServiceType::NodePort => {
            let mut named: Vec<(&str, String)> = nodes
                .iter()
                .filter_map(|n| Some((n.metadata.name.as_deref()?, node_address(n)?)))
                .collect();
            // Deterministic across reconciles: the first node by name.
            named.sort();
            let (_, host) = named.into_iter().next()?;
            Some(host_port(&host, port.node_port?))
        }
        ServiceType::ClusterIp => {
            let ip = service.spec.as_ref()?.cluster_ip.as_ref()?;
            Some(host_port(ip, port.port))
        }
    }
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

    fn svc(node_port: Option<i32>, ingress: Option<LoadBalancerIngress>) -> Service {
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
                    ingress: ingress.map(|i| vec![i]),
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
    fn load_balancer_endpoint_comes_from_the_ingress() {
        assert_eq!(
            endpoint(ServiceType::LoadBalancer, &svc(Some(31000), None), &[]),
            None
        );
        let ip = LoadBalancerIngress {
            ip: Some("203.0.113.9".into()),
            ..LoadBalancerIngress::default()
        };
        assert_eq!(
            endpoint(ServiceType::LoadBalancer, &svc(Some(31000), Some(ip)), &[]).as_deref(),
            Some("203.0.113.9:40000")
        );
        let host = LoadBalancerIngress {
            hostname: Some("relay.example".into()),
            ..LoadBalancerIngress::default()
        };
        assert_eq!(
            endpoint(ServiceType::LoadBalancer, &svc(None, Some(host)), &[]).as_deref(),
            Some("relay.example:40000")
        );
    }

    #[test]
    fn node_port_endpoint_prefers_external_addresses_of_the_first_node() {
        let nodes = [
            node("b", &[("InternalIP", "192.0.2.2")]),
            node(
                "a",
                &[("InternalIP", "192.0.2.1"), ("ExternalIP", "198.51.100.1")],
            ),
        ];
        assert_eq!(
            endpoint(ServiceType::NodePort, &svc(Some(31820), None), &nodes).as_deref(),
            Some("198.51.100.1:31820")
        );
        let v6 = [node("a", &[("InternalIP", "2001:db8::1")])];
        assert_eq!(
            endpoint(ServiceType::NodePort, &svc(Some(31820), None), &v6).as_deref(),
            Some("[2001:db8::1]:31820")
        );
        assert_eq!(
            endpoint(ServiceType::NodePort, &svc(None, None), &nodes),
            None
        );
        assert_eq!(
            endpoint(ServiceType::NodePort, &svc(Some(1), None), &[]),
            None
        );
    }

    #[test]
    fn cluster_ip_endpoint_and_peer_hint() {
        assert_eq!(
            endpoint(ServiceType::ClusterIp, &svc(None, None), &[]).as_deref(),
            Some("10.96.3.4:40000")
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
