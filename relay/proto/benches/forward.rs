//! What forwarding costs in the core, without IO: parsing a transport datagram, and deciding one
//! datagram and a batch of 32 with 1, 1,000 and 100,000 live sessions in the table; then the same
//! through the lock-free routes (`routes_*`: one datagram with the batch pinned, and a batch of
//! 32 with its pin). The end-to-end figures, with sockets, are `wpex-bench`'s (README,
//! Performance).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wpex_proto::Worker;
use wpex_proto::message::Message;
use wpex_proto::{Config, Output, Relay};

use wpex_testkit::fake::{handshake, transport};

/// Peer `i`'s address: distinct for every session side.
fn peer(i: u32, side: u8) -> SocketAddr {
    let [a, b, c] = [(i >> 16) as u8, (i >> 8) as u8, i as u8];
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, side ^ a, b, c), 51820))
}

/// An open-mode relay with `n` sessions, each between its own two endpoints.
fn relay_with(n: u32, now: Instant) -> Relay {
    let config = Config {
        // Broadcasts to every known endpoint would make setting up n sessions cost n².
        broadcast_rate: 1,
        source_rate: 0,
        max_indices: 1 << 19,
        max_endpoints: 1 << 19,
        ..Config::default()
    };
    let mut relay = Relay::new(config, now, [7; 32]);
    for i in 0..n {
        let (a, b) = (2 * i + 1, 2 * i + 2);
        relay.handle_input(now, peer(i, 0), &mut handshake(1, a, 0));
        let out = relay.handle_input(now, peer(i, 128), &mut handshake(2, b, a));
        assert!(
            matches!(out, Output::Forward(_)),
            "session {i} not set up: {out:?}"
        );
    }
    relay
}

fn parse(c: &mut Criterion) {
    let datagram = transport(1, 1420);
    c.bench_function("parse_transport", |b| {
        b.iter(|| Message::parse(black_box(&datagram)).is_ok());
    });
}

/// The core's decision for one datagram, with the lock held.
fn core_one(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("forward_one");
    for n in [1u32, 1_000, 100_000] {
        let mut relay = relay_with(n, now);
        // Datagrams from A to B of a session in the middle of the table.
        let i = n / 2;
        let mut datagram = transport(2 * i + 2, 1420);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| relay.handle_input(now, peer(i, 0), black_box(&mut datagram)));
        });
    }
    group.finish();
}

/// 32 datagrams of different sessions, spread over the table, through the core.
fn core_batch(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("forward_batch_of_32");
    group.throughput(Throughput::Elements(32));
    for n in [32u32, 1_000, 100_000] {
        let mut relay = relay_with(n, now);
        let step = n / 32;
        let mut batch: Vec<(SocketAddr, Vec<u8>)> = (0..32)
            .map(|k| {
                let i = k * step;
                (peer(i, 0), transport(2 * i + 2, 1420))
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for (src, datagram) in &mut batch {
                    black_box(relay.handle_input(now, *src, datagram));
                }
            });
        });
    }
    group.finish();
}

/// One datagram through the lock-free routes, as an IO worker forwards transport data.
fn routes_one(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("routes_forward");
    for n in [1u32, 1_000, 100_000] {
        let mut relay = relay_with(n, now);
        let i = n / 2;
        let datagram = transport(2 * i + 2, 1420);
        // A's first data confirms B's index in the core; the routes take the rest.
        relay.handle_input(now, peer(i, 0), &mut datagram.clone());
        let mut worker = Worker::new(relay.routes().clone());
        let batch = worker.batch(now);
        assert_eq!(batch.forward(peer(i, 0), &datagram), Some(peer(i, 128)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| batch.forward(peer(i, 0), black_box(&datagram)));
        });
    }
    group.finish();
}

/// 32 datagrams of different sessions through the routes, one pinned batch.
fn routes_batch(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("routes_forward_batch_of_32");
    group.throughput(Throughput::Elements(32));
    for n in [32u32, 1_000, 100_000] {
        let mut relay = relay_with(n, now);
        let step = n / 32;
        let batch: Vec<(SocketAddr, Vec<u8>)> = (0..32)
            .map(|k| {
                let i = k * step;
                let mut datagram = transport(2 * i + 2, 1420);
                relay.handle_input(now, peer(i, 0), &mut datagram);
                (peer(i, 0), datagram)
            })
            .collect();
        let mut worker = Worker::new(relay.routes().clone());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let pinned = worker.batch(now);
                for (src, datagram) in &batch {
                    black_box(pinned.forward(*src, datagram));
                }
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    parse,
    core_one,
    core_batch,
    routes_one,
    routes_batch
);
criterion_main!(benches);
