//! What identifying a handshake costs: one mac1 check, and a full scan over 1, 100 and 10,000
//! allowed keys. The relay's scan budget (`--scan-budget`, in mac1 checks per second) is sized
//! from the per-check figure here.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wpex_proto::keys::{AllowedKeys, PublicKey};
use wpex_proto::message::Message;

/// A type-1 message of random bytes: no allowed key's mac1 matches, so a scan tries them all.
fn junk_initiation(rng: &mut StdRng) -> Vec<u8> {
    let mut d: Vec<u8> = (0..148).map(|_| rng.r#gen()).collect();
    d[..4].copy_from_slice(&[1, 0, 0, 0]);
    d
}

fn mac1(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let datagram = junk_initiation(&mut rng);
    let Ok(Message::Initiation(msg)) = Message::parse(&datagram) else {
        panic!("a well-formed initiation")
    };
    let mut group = c.benchmark_group("mac1_scan");
    for n in [1usize, 100, 10_000] {
        let keys = AllowedKeys::new((0..n).map(|_| PublicKey(rng.r#gen())));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &keys, |b, keys| {
            b.iter(|| keys.scan(&msg));
        });
    }
    group.finish();

    // The same check without the precomputed state, as the relay did before: the keyed BLAKE2s
    // set up from the 32-byte mac1 key and fed all 116 bytes.
    let mac1_key = [7u8; 32];
    c.bench_function("mac1_check_unprecomputed", |b| {
        b.iter(|| wpex_proto::crypto::mac(&mac1_key, &[msg.mac1_input()]));
    });
}

criterion_group!(benches, mac1);
criterion_main!(benches);
