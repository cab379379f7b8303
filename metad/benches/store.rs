//! metad's store operations against SQLite directly (no network, no daemon): create, lookup,
//! getattr, rename and the commit of a written layout, each one transaction as metad runs
//! it (WAL, synchronous=NORMAL); then lookups and creates while another thread creates.
//!
//! `cargo bench -p shardfs-metad --bench store`; results in docs/performance.md.

use criterion::{Criterion, criterion_group, criterion_main};
use shardfs_chunk_api::{ChunkId, Encoding};
use shardfs_meta_api::proto::{
    Cred, Extent, ROOT_INO, RenameMode, ShardPlace, StoredChunk, Timestamp,
};
use shardfs_metad::store::{ChunkdRecord, Store, VolumeOverrides, VolumeSettings};

const SETTINGS: VolumeSettings = VolumeSettings {
    hot: Encoding::Rs { k: 4, m: 2 },
    cold: Encoding::Rs { k: 4, m: 2 },
    chunk_size: 4 << 20,
};
/// Entries already in the directory the operations work in.
const ENTRIES: usize = 10_000;

fn store(dir: &tempfile::TempDir) -> Store {
    let store = Store::open(&dir.path().join("meta.db"), VolumeOverrides::default(), SETTINGS)
        .expect("opens");
    for i in 0..SETTINGS.hot.total() {
        let record = ChunkdRecord {
            id: format!("c{i}"),
            addr: format!("127.0.0.1:{}", 7100 + i),
            capacity_bytes: 1 << 40,
            free_bytes: 1 << 40,
            ..ChunkdRecord::default()
        };
        store.register_chunkd(&record).expect("registers");
    }
    store
}

fn stored(chunk: ChunkId, len: u64) -> StoredChunk {
    let shards = (0..SETTINGS.hot.total() as u8)
        .map(|index| ShardPlace { index, chunkd: format!("c{index}"), addr: String::new() })
        .collect();
    StoredChunk { chunk, len, encoding: SETTINGS.hot, shards }
}

fn store_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&dir);
    let file = libc::S_IFREG | 0o644;
    let parent = store.make_dir(ROOT_INO, b"d", 0o755, Cred::ROOT).expect("mkdir").attr.ino;
    for i in 0..ENTRIES {
        store.make_node(parent, format!("f{i}").as_bytes(), file, 0, Cred::ROOT).expect("create");
    }
    let known = store.lookup(parent, b"f1234").expect("lookup");

    let mut group = c.benchmark_group(format!("metad store, directory of {ENTRIES}"));
    let mut n = 0u64;
    group.bench_function("create", |b| {
        b.iter(|| {
            n += 1;
            store.make_node(parent, format!("new{n}").as_bytes(), file, 0, Cred::ROOT)
        })
    });
    group.bench_function("lookup", |b| b.iter(|| store.lookup(parent, b"f1234").expect("found")));
    group.bench_function("getattr", |b| b.iter(|| store.get_attr(known.ino).expect("found")));
    let mut flip = false;
    group.bench_function("rename", |b| {
        b.iter(|| {
            let (from, to): (&[u8], &[u8]) = if flip { (b"g", b"f1234") } else { (b"f1234", b"g") };
            flip = !flip;
            store
                .rename(parent, from, parent, to, RenameMode::Replace, &Cred::ROOT)
                .expect("renames")
        })
    });
    // A 4 KiB write's commit: one new chunk catalogued with its k+m shards, one extent.
    let mut seq = 0u64;
    group.bench_function("commit of a one-chunk layout", |b| {
        b.iter(|| {
            seq += 1;
            let chunk = ChunkId::of(&seq.to_le_bytes());
            let extent = Extent { offset: 0, len: 4096, chunk, chunk_offset: 0 };
            store.commit_write(known.ino, &[stored(chunk, 4096)], &[], &[extent], Timestamp::now())
        })
    });
    // Beside a stream of changes: another thread creates files the whole time.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let name = format!("bg{i}");
                store.make_node(parent, name.as_bytes(), file, 0, Cred::ROOT).expect("create");
                // A steady stream (a few thousand a second), not a flood the WAL outgrows.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        group.bench_function("lookup while another thread creates", |b| {
            b.iter(|| store.lookup(parent, b"f1234").expect("found"))
        });
        group.bench_function("create while another thread creates", |b| {
            b.iter(|| {
                n += 1;
                store.make_node(parent, format!("new{n}").as_bytes(), file, 0, Cred::ROOT)
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    group.finish();
}

criterion_group!(benches, store_benches);
criterion_main!(benches);
