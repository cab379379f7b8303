//! Codec micro-benchmarks for one 4 MiB chunk at the default 4+2 encoding: BLAKE3 (plain and
//! with the hash tree of `hash_tree`), and Reed-Solomon encode and decode with
//! reed-solomon-erasure (what chunkd uses) beside reed-solomon-simd (the alternative), so the
//! choice is measured.
//!
//! `cargo bench -p shardfs-chunk-api --bench codec`; results in docs/performance.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shardfs_chunk_api::{Encoding, codec, hash_tree};

const CHUNK: usize = 4 << 20;
const K: usize = 4;
const M: usize = 2;
const ENCODING: Encoding = Encoding::Rs { k: K as u8, m: M as u8 };

/// Bytes that do not repeat, as written data would not.
fn chunk() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..CHUNK / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn codec_benches(c: &mut Criterion) {
    let data = chunk();
    let (k, m) = (K, M);
    let mut group = c.benchmark_group("4 MiB chunk, 4+2");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.sample_size(20);

    group.bench_function("blake3", |b| b.iter(|| blake3::hash(&data)));
    // What a write computes instead: the id and the 16 KiB segments' hash tree in one pass.
    group.bench_function("blake3 with hash tree", |b| b.iter(|| hash_tree::build(&data)));

    group.bench_function("encode, reed-solomon-erasure", |b| {
        b.iter(|| codec::encode(ENCODING, &data))
    });
    let shards = codec::encode(ENCODING, &data);
    // The worst case a read meets: two data shards lost, rebuilt from the two parity shards.
    group.bench_function("decode without 2 data shards, reed-solomon-erasure", |b| {
        b.iter_batched(
            || {
                let mut present: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
                present[0] = None;
                present[1] = None;
                present
            },
            |mut present| codec::decode(ENCODING, CHUNK, &mut present).expect("decodes"),
            BatchSize::LargeInput,
        )
    });

    let originals: Vec<&[u8]> = data.chunks(ENCODING.shard_len(CHUNK)).collect();
    group.bench_function("encode, reed-solomon-simd", |b| {
        b.iter(|| reed_solomon_simd::encode(k, m, &originals).expect("encodes"))
    });
    let recovery = reed_solomon_simd::encode(k, m, &originals).expect("encodes");
    group.bench_function("decode without 2 data shards, reed-solomon-simd", |b| {
        b.iter(|| {
            let kept = [(2, originals[2]), (3, originals[3])];
            let parity = [(0, &recovery[0]), (1, &recovery[1])];
            reed_solomon_simd::decode(k, m, kept, parity).expect("decodes")
        })
    });

    // What a write does with each chunk before the puts.
    group.bench_function("blake3 + encode, reed-solomon-erasure", |b| {
        b.iter(|| (blake3::hash(&data), codec::encode(ENCODING, &data)))
    });
    group.finish();
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
