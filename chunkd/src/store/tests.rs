use std::os::unix::fs::MetadataExt;

use super::*;
use shardfs_chunk_api::chunk_id::ChunkId;
use shardfs_chunk_api::codec;

const ENCODING: Encoding = Encoding { k: 2, m: 1 };

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
    let shard = put(&f.store, "same", 1).await;
    let path = shard_file_path(f.dir.path(), shard);
    let inode = fs::metadata(&path).unwrap().ino();
    put(&f.store, "same", 1).await;
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "file was rewritten");
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

    let bad_encoding = Encoding { k: 0, m: 1 };
    let result =
        f.store.put(shard, bad_encoding, chunk_len, checksum, data.clone(), Vec::new()).await;
    assert!(matches!(result, Err(ChunkdError::Invalid(_))), "{result:?}");

    let result = f.store.put(shard, ENCODING, chunk_len * 3, checksum, data, Vec::new()).await;
    assert!(matches!(result, Err(ChunkdError::Invalid(_))), "{result:?}");

    assert!(!shard_file_path(f.dir.path(), shard).exists());
    assert_eq!(f.store.stat().await.unwrap().shard_count, 0);
}

#[tokio::test]
async fn corrupt_shard_is_quarantined_and_reported() {
    let f = fixture().await;
    let mut reports = f.store.subscribe_corrupt_reports();
    let shard = put(&f.store, "corrupt", 2).await;
    let path = shard_file_path(f.dir.path(), shard);
    let mut bytes = fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let result = f.store.get(shard).await;
    assert!(matches!(result, Err(ChunkdError::Corrupt(_))), "{result:?}");
    assert!(!path.exists());
    let quarantined = f.dir.path().join("quarantine").join(layout::file_name(shard));
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
async fn put_over_a_damaged_file_replaces_it() {
    let f = fixture().await;
    let shard = put(&f.store, "damaged", 0).await;
    let path = shard_file_path(f.dir.path(), shard);
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 1; // chunk_len
    fs::write(&path, &bytes).unwrap();
    put(&f.store, "damaged", 0).await;
    assert!(f.store.get(shard).await.is_ok());
    let stat = f.store.stat().await.unwrap();
    assert_eq!((stat.shard_count, stat.quarantined), (1, 1));
    assert_eq!(stat.used_bytes, fs::metadata(&path).unwrap().len());

    // Truncated, too.
    fs::write(&path, b"short").unwrap();
    put(&f.store, "damaged", 0).await;
    assert!(f.store.get(shard).await.is_ok());
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
    // Names that are not shards must be skipped, not listed or counted.
    let leaf = shard_file_path(f.dir.path(), expected[0]).parent().unwrap().to_path_buf();
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
        total += fs::metadata(shard_file_path(f.dir.path(), shard)).unwrap().len();
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
    let encoding = Encoding { k: 1, m: 1 };
    let chunk = vec![5u8; 8 << 20];
    let (id, tree) = shardfs_chunk_api::hash_tree::build(&chunk);
    let shard = ShardId { chunk: id, index: 0 };
    let checksum = *blake3::hash(&chunk).as_bytes();
    let result = store.put(shard, encoding, chunk.len() as u64, checksum, chunk, tree).await;
    assert!(matches!(result, Err(ChunkdError::NoSpace(_))), "{result:?}");
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(store.stat().await.unwrap().shard_count, 0);
}
