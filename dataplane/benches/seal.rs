//! Seal and open throughput against raw AES-256-GCM on the same buffers, in the same run.
//!
//! `cargo bench -p helpr-dataplane --bench seal`. Each iteration handles one field, so
//! fields/s = 1 / time per iteration; criterion also prints MB/s.
#![allow(clippy::expect_used)] // a benchmark has nothing to recover from

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use helpr_dataplane::crypto::{self, Dek, DekVersion, SealContext, SealingKey};

const SIZES: [(usize, &str); 3] = [(1024, "1KiB"), (16 * 1024, "16KiB"), (256 * 1024, "256KiB")];

fn bench(c: &mut Criterion) {
    let dek = Dek::generate().expect("rng");
    let key = SealingKey::new(DekVersion::FIRST, &dek);
    let raw = Aes256Gcm::new_from_slice(dek.expose_bytes()).expect("32-byte key");
    let ctx = SealContext::new(
        "acme",
        "0b6f2a6e-6c39-4c4e-9d0e-9a1c1d7b2f10",
        "message.text_body",
    );
    let aad = ctx.associated_data(DekVersion::FIRST, crypto::FORMAT_V1);
    let nonce = [7u8; 12];

    let mut group = c.benchmark_group("seal");
    for (size, label) in SIZES {
        let plaintext = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("raw_aes256gcm", label),
            &plaintext,
            |b, p| {
                b.iter(|| {
                    raw.encrypt(Nonce::from_slice(&nonce), Payload { msg: p, aad: &aad })
                        .expect("encrypt")
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("helpr_seal", label), &plaintext, |b, p| {
            b.iter(|| crypto::seal(&key, &ctx, p).expect("seal"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("open");
    for (size, label) in SIZES {
        let plaintext = vec![0x5au8; size];
        let raw_ct = raw
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .expect("encrypt");
        let sealed = crypto::seal(&key, &ctx, &plaintext).expect("seal");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("raw_aes256gcm", label),
            &raw_ct,
            |b, ct| {
                b.iter(|| {
                    raw.decrypt(Nonce::from_slice(&nonce), Payload { msg: ct, aad: &aad })
                        .expect("decrypt")
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("helpr_open", label), &sealed, |b, s| {
            b.iter(|| crypto::open(&key, &ctx, s).expect("open"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
