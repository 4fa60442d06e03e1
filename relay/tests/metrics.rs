//! The metrics count what the lock-free routes forward, from every worker, also from workers
//! gone before the scrape.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wpex::metrics;
use wpex::shared::Counters;
use wpex_proto::{Config, Output, Relay, Worker};
use wpex_testkit::fake::{handshake, transport};
use wpex_testkit::sample;

const A: &str = "198.51.100.10:51820";
const B: &str = "203.0.113.20:40001";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn data(receiver: u32) -> Vec<u8> {
    transport(receiver, 64)
}

/// An open relay with one confirmed session: A's index 1, B's index 2.
fn session(now: Instant) -> Relay {
    let mut relay = Relay::new(Config::default(), now, [7; 32]);
    let mut feed = |from: &str, datagram: Vec<u8>| {
        relay.handle_input_inline(now, addr(from), &mut datagram.clone())
    };
    assert!(matches!(feed(A, handshake(1, 1, 0)), Output::Broadcast(_)));
    assert_eq!(feed(B, handshake(2, 2, 1)), Output::Forward(addr(A)));
    assert_eq!(feed(A, data(2)), Output::Forward(addr(B)));
    relay
}

/// Offers one datagram to the routes, as an IO worker does before taking the core's lock.
fn route(worker: &mut Worker, now: Instant, from: &str, datagram: &[u8]) -> Option<SocketAddr> {
    worker.batch(now).forward(addr(from), datagram)
}

#[test]
fn metrics_count_transport_data_forwarded_through_the_routes() {
    let t0 = Instant::now();
    let relay = session(t0);
    let routes = relay.routes().clone();
    let shared = Arc::new(Mutex::new(relay));
    let registry = metrics::registry(shared.clone(), Arc::new(Counters::default()));
    let scrape = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let series = |name: &str| {
            sample(&text, &format!("{name}{{type=\"transport_data\"}}")).unwrap_or(-1.0)
        };
        (
            series("wpex_forwarded_packets_total"),
            series("wpex_forwarded_bytes_total"),
        )
    };
    assert_eq!(
        scrape(),
        (1.0, 64.0),
        "the confirming packet, through the core"
    );
    {
        // Two workers, one of them gone before the scrape: its packets still count.
        let mut gone = Worker::new(routes.clone());
        assert_eq!(route(&mut gone, t0, A, &data(2)), Some(addr(B)));
    }
    let mut worker = Worker::new(routes);
    for _ in 0..3 {
        assert_eq!(route(&mut worker, t0, B, &data(1)), Some(addr(A)));
    }
    assert_eq!(scrape(), (5.0, 320.0));
}
