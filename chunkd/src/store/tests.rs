use super::*;
use shardfs_chunk_api::chunk_id::ChunkId;
use shardfs_chunk_api::codec;

const ENCODING: Encoding = Encoding::Rs { k: 2, m: 1 };

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<ShardStore>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    Fixture { dir, store }
}

/// The shards of a chunk made from `seed`, and the chunk's length.
fn shards_of(seed: &str) -> (ChunkId, u64, Vec<Vec<u8>>) {
    let chunk = seed.repeat(100).into_bytes();
    (ChunkId::of(&chunk), chunk.len() as u64, codec::encode(ENCODING, &chunk))
}

/// Where `shard` is on disk in the store at `dir`.
pub(crate) fn stored_at(dir: &Path, shard: ShardId) -> StoredAt {
    inventory(dir).unwrap().into_iter().find(|at| at.shard == shard).expect("shard on disk")
}

/// Flips a bit of `shard`'s record on disk, `from_end` bytes before its end.
pub(crate) fn flip_byte(dir: &Path, shard: ShardId, from_end: u64) {
    let at = stored_at(dir, shard);
    let file = OpenOptions::new().read(true).write(true).open(&at.path).unwrap();
    let mut byte = [0u8];
    let offset = at.offset + at.len - 1 - from_end;
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], offset).unwrap();
}

/// The bytes of `shard`'s record on disk.
fn record_bytes(dir: &Path, shard: ShardId) -> Vec<u8> {
    let at = stored_at(dir, shard);
    let mut bytes = vec![0u8; at.len as usize];
    File::open(&at.path).unwrap().read_exact_at(&mut bytes, at.offset).unwrap();
    bytes
}

/// Total length of the volume data files.
fn volume_bytes(dir: &Path) -> u64 {
    let volumes = dir.join(volume::VOLUMES_DIR);
    volume::numbers(&volumes)
        .unwrap()
        .into_iter()
        .map(|n| fs::metadata(volume::data_path(&volumes, n)).unwrap().len())
        .sum()
}

async fn put(store: &Arc<ShardStore>, seed: &str, index: u8) -> ShardId {
    let (chunk, chunk_len, shards) = shards_of(seed);
    let shard = ShardId { chunk, index };
    let data = shards[index as usize].clone();
    let checksum = *blake3::hash(&data).as_bytes();
    store.put(shard, ENCODING, chunk_len, checksum, data, Vec::new()).await.unwrap();
    shard
}

#[tokio::test]
async fn put_get_round_trip() {
    let f = fixture().await;
    let (chunk, chunk_len, shards) = shards_of("round trip");
    for index in 0..3 {
        put(&f.store, "round trip", index).await;
    }
    for index in 0..3u8 {
        let stored = f.store.get(ShardId { chunk, index }).await.unwrap();
        assert_eq!(
            stored,
            StoredShard { encoding: ENCODING, chunk_len, data: shards[index as usize].clone() }
        );
    }
    let missing = ShardId { chunk: ChunkId::of(b"nope"), index: 0 };
    assert!(matches!(f.store.get(missing).await, Err(ChunkdError::NotFound(_))));
}

#[tokio::test]
async fn put_is_idempotent_and_does_not_rewrite() {
    let f = fixture().await;
    put(&f.store, "same", 1).await;
    let written = volume_bytes(f.dir.path());
    put(&f.store, "same", 1).await;
    assert_eq!(volume_bytes(f.dir.path()), written, "the shard was written again");
    let stat = f.store.stat().await.unwrap();
    assert_eq!(stat.shard_count, 1);
}

#[tokio::test]
async fn conflicting_content_for_a_stored_shard_is_rejected() {
    let f = fixture().await;
    let shard = put(&f.store, "conflict", 0).await;
    let stored = f.store.get(shard).await.unwrap();
    let mut other = stored.data.clone();
    other[0] ^= 1;
    let checksum = *blake3::hash(&other).as_bytes();
    let result = f.store.put(shard, ENCODING, stored.chunk_len, checksum, other, Vec::new()).await;
    assert!(matches!(result, Err(ChunkdError::Invalid(_))), "{result:?}");
    assert_eq!(f.store.get(shard).await.unwrap(), stored);
}

#[tokio::test]
async fn bad_puts_are_rejected() {
    let f = fixture().await;
    let (chunk, chunk_len, shards) = shards_of("bad");
    let data = shards[0].clone();
    let checksum = *blake3::hash(&data).as_bytes();
    let shard = ShardId { chunk, index: 0 };

    let mut wrong_sum = checksum;
    wrong_sum[0] ^= 1;
    let result = f.store.put(shard, ENCODING, chunk_len, wrong_sum, data.clone(), Vec::new()).await;
    assert!(matches!(result, Err(ChunkdError::ChecksumMismatch(_))), "{result:?}");

    let out_of_range = ShardId { chunk, index: 3 };
    let result =
        f.store.put(out_of_range, ENCODING, chunk_len, checksum, data.clone(), Vec::new()).await;
    assert!(matches!(result, Err(ChunkdError::Invalid(_))), "{result:?}");

    let bad_encoding = Encoding::Rs { k: 0, m: 1 };
    let result =
        f.store.put(shard, bad_encoding, chunk_len, checksum, data.clone(), Vec::new()).await;
    assert!(matches!(result, Err(ChunkdError::Invalid(_))), "{result:?}");

    let result = f.store.put(shard, ENCODING, chunk_len * 3, checksum, data, Vec::new()).await;
    assert!(matches!(result, Err(ChunkdError::Invalid(_))), "{result:?}");

    assert!(inventory(f.dir.path()).unwrap().is_empty());
    assert_eq!(f.store.stat().await.unwrap().shard_count, 0);
}

#[tokio::test]
async fn corrupt_shard_is_quarantined_and_reported() {
    let f = fixture().await;
    let mut reports = f.store.subscribe_corrupt_reports();
    let shard = put(&f.store, "corrupt", 2).await;
    flip_byte(f.dir.path(), shard, 0);
    let bytes = record_bytes(f.dir.path(), shard);

    let result = f.store.get(shard).await;
    assert!(matches!(result, Err(ChunkdError::Corrupt(_))), "{result:?}");
    assert!(inventory(f.dir.path()).unwrap().is_empty(), "the record is marked dead");
    let quarantined = f.dir.path().join("quarantine").join(legacy::file_name(shard));
    assert_eq!(fs::read(quarantined).unwrap(), bytes);
    assert_eq!(reports.try_recv().unwrap(), shard);

    let stat = f.store.stat().await.unwrap();
    assert_eq!((stat.quarantined, stat.shard_count, stat.used_bytes), (1, 0, 0));
    assert!(matches!(f.store.get(shard).await, Err(ChunkdError::NotFound(_))));

    // A fresh put restores it.
    put(&f.store, "corrupt", 2).await;
    assert!(f.store.get(shard).await.is_ok());
}

#[tokio::test]
async fn put_over_a_damaged_record_replaces_it() {
    let f = fixture().await;
    let shard = put(&f.store, "damaged", 0).await;
    flip_byte(f.dir.path(), shard, 5);
    put(&f.store, "damaged", 0).await;
    assert!(f.store.get(shard).await.is_ok());
    let stat = f.store.stat().await.unwrap();
    assert_eq!((stat.shard_count, stat.quarantined), (1, 1));
    assert_eq!(stat.used_bytes, stored_at(f.dir.path(), shard).len);
}

#[tokio::test]
async fn list_is_ordered_and_paginates() {
    let f = fixture().await;
    let mut expected = Vec::new();
    for i in 0..20 {
        for index in 0..3 {
            expected.push(put(&f.store, &format!("list {i}"), index).await);
        }
    }
    expected.sort();
    // Names that are not shards among the files of an older store must be skipped, not
    // listed or counted.
    let leaf = legacy::shard_path_in(&f.dir.path().join("shards"), expected[0]);
    let leaf = leaf.parent().unwrap();
    fs::create_dir_all(leaf).unwrap();
    f.store.legacy.present.store(true, Ordering::Release);
    fs::write(leaf.join("notes.txt"), b"x").unwrap();
    fs::write(leaf.join(format!("{}.1", "AB".repeat(32))), b"x").unwrap();
    fs::create_dir_all(f.dir.path().join("shards/zz")).unwrap();

    assert_eq!(f.store.list(None, 1000).await.unwrap(), expected);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = f.store.list(after, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().copied();
        paged.extend(page);
    }
    assert_eq!(paged, expected);
    assert!(f.store.list(None, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn delete_removes_and_reports_absence() {
    let f = fixture().await;
    let shard = put(&f.store, "delete", 1).await;
    assert!(f.store.delete(shard).await.unwrap());
    assert!(!f.store.delete(shard).await.unwrap());
    assert!(matches!(f.store.get(shard).await, Err(ChunkdError::NotFound(_))));
    let stat = f.store.stat().await.unwrap();
    assert_eq!((stat.shard_count, stat.used_bytes), (0, 0));
}

#[tokio::test]
async fn stat_counts_and_reopen_keeps_id_and_counts() {
    let f = fixture().await;
    let mut total = 0;
    for index in 0..3 {
        let shard = put(&f.store, "stat", index).await;
        total += stored_at(f.dir.path(), shard).len;
    }
    let stat = f.store.stat().await.unwrap();
    assert_eq!((stat.shard_count, stat.used_bytes), (3, total));
    assert!(stat.capacity_bytes > 0 && stat.free_bytes <= stat.capacity_bytes);

    let id = f.store.id().to_owned();
    assert_eq!(id.len(), 32);
    let Fixture { dir, store } = f;
    drop(store);
    fs::write(dir.path().join("tmp/leftover.tmp"), b"partial").unwrap();
    let reopened = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    assert_eq!(reopened.id(), id);
    let stat = reopened.stat().await.unwrap();
    assert_eq!((stat.shard_count, stat.used_bytes), (3, total));
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_data_directory_serves_one_chunkd_at_a_time() {
    let f = fixture().await;
    let second = ShardStore::open(f.dir.path()).await;
    assert!(matches!(second, Err(StoreError::InUse { .. })), "{:?}", second.err());
}

#[tokio::test]
async fn a_damaged_id_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("chunkd.id"), b"not an id\n").unwrap();
    let error = ShardStore::open(dir.path()).await.err().unwrap();
    assert!(matches!(error, StoreError::BadId { .. }), "{error}");
}

#[tokio::test]
async fn unwritable_directory_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    if nix::unistd::geteuid().is_root() {
        return; // root writes through permission bits
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
    let error = ShardStore::open(dir.path()).await.err().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let message = error.to_string();
    assert!(message.contains("is not writable: Permission denied"), "{message}");
}

#[tokio::test]
async fn concurrent_puts_of_one_shard_store_it_once() {
    let f = fixture().await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = f.store.clone();
            tokio::spawn(async move { put(&store, "race", 0).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(f.store.stat().await.unwrap().shard_count, 1);
    assert_eq!(fs::read_dir(f.dir.path().join("tmp")).unwrap().count(), 0);
}

/// Needs a directory on a nearly full file system (e.g. a 256 KiB tmpfs) named by
/// `SHARDFS_TEST_SMALL_FS`; skipped otherwise, since mounting needs privileges.
#[tokio::test]
async fn full_disk_is_no_space() {
    let Some(small) = std::env::var_os("SHARDFS_TEST_SMALL_FS") else {
        return;
    };
    let dir = tempfile::tempdir_in(small).unwrap();
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    let encoding = Encoding::Rs { k: 1, m: 1 };
    let chunk = vec![5u8; 8 << 20];
    let (id, tree) = shardfs_chunk_api::hash_tree::build(&chunk);
    let shard = ShardId { chunk: id, index: 0 };
    let checksum = *blake3::hash(&chunk).as_bytes();
    let result = store.put(shard, encoding, chunk.len() as u64, checksum, chunk, tree).await;
    assert!(matches!(result, Err(ChunkdError::NoSpace(_))), "{result:?}");
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(store.stat().await.unwrap().shard_count, 0);
}

/// A store whose volumes hold about `records` records of the shards `put` makes.
async fn small_volumes(dir: &Path, records: u64) -> Arc<ShardStore> {
    let config = VolumeConfig { volume_bytes: records * 600 };
    Arc::new(ShardStore::open_with(dir, config).await.unwrap())
}

async fn all_readable(store: &Arc<ShardStore>, shards: &[ShardId]) {
    for &shard in shards {
        let stored = store.get(shard).await;
        assert!(stored.is_ok(), "{shard}: {stored:?}");
    }
}

#[tokio::test]
async fn full_volumes_are_sealed_and_every_shard_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_volumes(dir.path(), 4).await;
    let mut shards = Vec::new();
    for i in 0..10 {
        shards.push(put(&store, &format!("rotate {i}"), 0).await);
    }
    let volumes = dir.path().join(volume::VOLUMES_DIR);
    let numbers = volume::numbers(&volumes).unwrap();
    assert!(numbers.len() >= 3, "{numbers:?}");
    // Sealed volumes are indexed as they are sealed.
    for &n in &numbers[..numbers.len() - 1] {
        assert!(volumes.join(format!("v{n:08}.idx")).exists(), "volume {n}");
    }
    drop(store);
    let store = small_volumes(dir.path(), 4).await;
    all_readable(&store, &shards).await;
    assert_eq!(store.stat().await.unwrap().shard_count, 10);
}

#[tokio::test]
async fn concurrent_puts_share_group_commits_and_are_all_durable() {
    let f = fixture().await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = f.store.clone();
            tokio::spawn(async move { put(&store, &format!("group {i}"), (i % 3) as u8).await })
        })
        .collect();
    let mut shards = Vec::new();
    for task in tasks {
        shards.push(task.await.unwrap());
    }
    let Fixture { dir, store } = f;
    drop(store);
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    all_readable(&store, &shards).await;
}

/// A crash in the middle of a group leaves a half-written record at the end of the volume,
/// or a whole one whose bytes did not all reach the disk: the next start cuts off the first,
/// skips and reports the second, and keeps every record before them.
#[tokio::test]
async fn records_a_crash_cut_short_are_dropped_at_the_next_start() {
    for case in ["half a record", "part of a header", "a damaged record"] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
        let shards = vec![put(&store, "before 1", 0).await, put(&store, "before 2", 1).await];
        let victim = put(&store, "victim", 2).await;
        let mut torn = record_bytes(dir.path(), victim);
        assert!(store.delete(victim).await.unwrap());
        drop(store);
        // The closing store indexed its volume; a crash would have left the index behind.
        let volumes = dir.path().join(volume::VOLUMES_DIR);
        fs::remove_file(volumes.join("v00000001.idx")).unwrap();
        let data = volume::data_path(&volumes, 1);
        let whole = fs::metadata(&data).unwrap().len();
        let kept = match case {
            "half a record" => {
                torn.truncate(torn.len() / 2);
                whole
            }
            "part of a header" => {
                torn.truncate(40);
                whole
            }
            _ => {
                *torn.last_mut().unwrap() ^= 1;
                whole + torn.len() as u64
            }
        };
        OpenOptions::new().write(true).open(&data).unwrap().write_all_at(&torn, whole).unwrap();

        let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
        let mut reports = store.subscribe_corrupt_reports();
        assert_eq!(fs::metadata(&data).unwrap().len(), kept, "{case}");
        all_readable(&store, &shards).await;
        assert!(matches!(store.get(victim).await, Err(ChunkdError::NotFound(_))), "{case}");
        assert_eq!(store.stat().await.unwrap().shard_count, 2, "{case}");
        if case == "a damaged record" {
            assert_eq!(reports.try_recv().unwrap(), victim);
        } else {
            assert!(reports.try_recv().is_err(), "{case}");
        }
        // New records go after the last whole one, and survive the next start.
        let after = put(&store, "after", 0).await;
        drop(store);
        let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
        all_readable(&store, &[shards.clone(), vec![after]].concat()).await;
    }
}

/// Deleted records' space comes back once their volume is compacted and the live ones
/// move. A crash after the moved copies were synced but before the old ones were marked
/// dead leaves both: the next start keeps the new one, and nothing deleted comes back.
#[tokio::test]
async fn compaction_moves_live_records_and_reclaims_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_volumes(dir.path(), 8).await;
    let mut shards = Vec::new();
    for i in 0..16 {
        shards.push(put(&store, &format!("compact {i}"), 0).await);
    }
    let volumes = dir.path().join(volume::VOLUMES_DIR);
    let first = volume::data_path(&volumes, 1);
    let in_first: Vec<ShardId> = inventory(dir.path())
        .unwrap()
        .into_iter()
        .filter(|at| at.path == first)
        .map(|at| at.shard)
        .collect();
    assert!(in_first.len() >= 7, "{in_first:?}");
    let (deleted, moved) = in_first.split_at(6);
    for &shard in deleted {
        assert!(store.delete(shard).await.unwrap());
    }
    let kept: Vec<ShardId> = shards.iter().copied().filter(|s| !deleted.contains(s)).collect();
    let snapshot: Vec<(PathBuf, Vec<u8>)> = ["dat", "idx", "del"]
        .iter()
        .map(|ext| first.with_extension(ext))
        .map(|path| (path.clone(), fs::read(&path).unwrap()))
        .collect();
    assert_eq!(compact::candidate(&store, 0.5), Some(1));
    compact::compact(&store, 1, u64::MAX).await.unwrap();
    assert!(!first.exists());
    let progress = store.compaction_progress();
    assert_eq!(progress.volumes.load(Ordering::Relaxed), 1);
    assert!(progress.bytes_reclaimed.load(Ordering::Relaxed) > 0);
    all_readable(&store, &kept).await;
    assert_eq!(store.stat().await.unwrap().shard_count, kept.len() as u64);
    drop(store);

    for (path, bytes) in &snapshot {
        fs::write(path, bytes).unwrap();
    }
    let store = small_volumes(dir.path(), 8).await;
    let gone = |store: Arc<ShardStore>, shards: Vec<ShardId>| async move {
        for shard in shards {
            let result = store.get(shard).await;
            assert!(matches!(result, Err(ChunkdError::NotFound(_))), "{shard}: {result:?}");
        }
    };
    all_readable(&store, &kept).await;
    gone(store.clone(), deleted.to_vec()).await;
    assert_eq!(store.stat().await.unwrap().shard_count, kept.len() as u64);
    assert!(store.delete(moved[0]).await.unwrap());
    drop(store);
    let store = small_volumes(dir.path(), 8).await;
    gone(store.clone(), vec![moved[0]]).await;
    // Both old copies and deleted records are dead now: compacting again clears the volume.
    compact::compact(&store, 1, u64::MAX).await.unwrap();
    assert!(!first.exists());
    drop(store);
    let store = small_volumes(dir.path(), 8).await;
    let expected: Vec<ShardId> = kept.iter().copied().filter(|&s| s != moved[0]).collect();
    all_readable(&store, &expected).await;
    gone(store.clone(), [deleted, &moved[..1]].concat()).await;
    assert_eq!(store.stat().await.unwrap().shard_count, expected.len() as u64);
}

/// A store written before volumes (one file per shard), pinned byte for byte in
/// `tests/data`: its shards stay readable, whole and by range, and move into volumes.
#[tokio::test]
async fn a_store_of_shard_files_stays_readable_and_moves_into_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/file-per-shard-store");
    copy_tree(&pinned, dir.path());
    let encoding = Encoding::Rs { k: 2, m: 1 };
    let big: Vec<u8> = (0..3 * 16384 + 5).map(|i| (i % 251) as u8).collect();
    let small = b"a small chunk of the pinned store".to_vec();
    let expected: Vec<(ShardId, Vec<u8>, u64)> = [big, small]
        .iter()
        .flat_map(|chunk| {
            let id = ChunkId::of(chunk);
            codec::encode(encoding, chunk).into_iter().enumerate().map(move |(index, data)| {
                (ShardId { chunk: id, index: index as u8 }, data, chunk.len() as u64)
            })
        })
        .collect();
    let check = |store: Arc<ShardStore>| {
        let expected = expected.clone();
        async move {
            let listed = store.list(None, 100).await.unwrap();
            let mut ids: Vec<ShardId> = expected.iter().map(|(s, ..)| *s).collect();
            ids.sort();
            assert_eq!(listed, ids);
            for (shard, data, chunk_len) in &expected {
                let stored = store.get(*shard).await.unwrap();
                assert_eq!(
                    (&stored.data, stored.chunk_len, stored.encoding),
                    (data, *chunk_len, encoding)
                );
            }
            // The first data shard of the big chunk carries its tree.
            let (shard, data, _) = &expected[0];
            let (range, tree) = store.get_range(*shard, 100, 50, true).await.unwrap();
            assert_eq!((&range[..], tree.len()), (&data[100..150], 4 * hash_tree::ENTRY_LEN));
            assert_eq!(store.stat().await.unwrap().shard_count, 6);
        }
    };
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    assert_eq!(store.id(), "610e457b64742de05311a46896b92a71");
    check(store.clone()).await;
    migrate(store.clone(), std::future::pending()).await;
    assert!(!dir.path().join("shards").exists(), "the emptied tree is removed");
    assert!(
        inventory(dir.path())
            .unwrap()
            .iter()
            .all(|at| at.path.starts_with(dir.path().join("volumes")))
    );
    check(store.clone()).await;
    drop(store);
    check(Arc::new(ShardStore::open(dir.path()).await.unwrap())).await;
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A version 1 record (no tree) moved in from an old store counts as the shard stored for a
/// put of the same bytes, as the old store's file did; other bytes are refused.
#[tokio::test]
async fn a_version_1_record_takes_a_put_of_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // The version 1 file pinned in `shard::tests::version_1_files_stay_readable`.
    let chunk = ChunkId([0xab; 32]);
    let shard = ShardId { chunk, index: 1 };
    let mut file = Vec::new();
    file.extend_from_slice(b"SFSHARD\0");
    file.extend_from_slice(&[1, 0, 2, 1, 1, 0, 0, 0]);
    file.extend_from_slice(&5u64.to_le_bytes());
    file.extend_from_slice(&chunk.0);
    file.extend_from_slice(&3u64.to_le_bytes());
    file.extend_from_slice(
        &hex::decode("e86928cfa43f070e37e3f7198134efefd2102b4134fa49899b4eb0fd019475c1").unwrap(),
    );
    file.extend_from_slice(&[1, 2, 3]);
    let path = legacy::shard_path_in(&dir.path().join("shards"), shard);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &file).unwrap();
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    migrate(store.clone(), std::future::pending()).await;
    let encoding = Encoding::Rs { k: 2, m: 1 };
    let put = |data: Vec<u8>| {
        let store = store.clone();
        async move {
            let checksum = *blake3::hash(&data).as_bytes();
            store.put(shard, encoding, 5, checksum, data, Vec::new()).await
        }
    };
    put(vec![1, 2, 3]).await.unwrap();
    let result = put(vec![1, 2, 4]).await;
    assert!(matches!(result, Err(ChunkdError::Invalid(_))), "{result:?}");
    assert_eq!(store.get(shard).await.unwrap().data, vec![1, 2, 3]);
    assert_eq!(store.stat().await.unwrap().shard_count, 1);
}

/// Damage to a header in the part of a volume read at start-up is not taken for the end of
/// what was written: the records after it are kept. A record of a newer format stops the
/// start with a clear error instead.
#[tokio::test]
async fn a_damaged_header_loses_only_its_own_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    let shards: Vec<ShardId> =
        vec![put(&store, "a", 0).await, put(&store, "b", 1).await, put(&store, "c", 2).await];
    let [_, b, c] = [0, 1, 2].map(|i| stored_at(dir.path(), shards[i]));
    drop(store);
    let volumes = dir.path().join(volume::VOLUMES_DIR);
    fs::remove_file(volumes.join("v00000001.idx")).unwrap();
    let data = OpenOptions::new().read(true).write(true).open(&b.path).unwrap();
    data.write_all_at(&[0xee], b.offset + 10).unwrap();
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    all_readable(&store, &[shards[0], shards[2]]).await;
    assert!(matches!(store.get(shards[1]).await, Err(ChunkdError::NotFound(_))));
    assert_eq!(fs::metadata(&b.path).unwrap().len(), c.offset + c.len, "nothing was cut");
    drop(store);

    fs::remove_file(volumes.join("v00000001.idx")).unwrap();
    data.write_all_at(&[9, 0], c.offset + 8).unwrap();
    let error = ShardStore::open(dir.path()).await.err().unwrap().to_string();
    assert!(error.contains("format version 9") && error.contains("newer"), "{error}");
}
