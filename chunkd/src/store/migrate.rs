//! Moving the shard files of a store from before volumes into volumes, in the background.
//! Each file is read and verified, appended to a volume through the group commit (unless the
//! volumes already hold the shard), and only then removed. A damaged file is quarantined and
//! reported as a read would.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Found, ShardStore, blocking, durable, io_error, legacy, stripe_of};
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::proto::ChunkdError;

/// Shard files listed per page.
const PAGE: usize = 256;
/// Bytes moved per second at most, so moving never starves client I/O.
const BYTES_PER_SECOND: u64 = 64 << 20;

/// Moves every shard file into volumes, then removes the emptied `shards/` tree. Returns
/// when done, when `shutdown` completes, or after an error (logged; the next start resumes).
pub async fn migrate(store: Arc<ShardStore>, shutdown: impl Future<Output = ()>) {
    if !store.legacy.present.load(Ordering::Acquire) {
        return;
    }
    tokio::select! {
        _ = shutdown => {}
        result = migrate_all(&store) => match result {
            Ok(moved) => info!(shards = moved, "every shard file has moved into volumes"),
            Err(e) => warn!("moving shard files into volumes stopped: {e}"),
        },
    }
}

async fn migrate_all(store: &Arc<ShardStore>) -> Result<u64, ChunkdError> {
    let started = Instant::now();
    let (mut moved, mut bytes) = (0u64, 0u64);
    let mut after = None;
    loop {
        let shards_dir = store.legacy.shards_dir.clone();
        let page = blocking(move || {
            legacy::list(&shards_dir, after, PAGE).map_err(|e| io_error("list", &shards_dir, e))
        })
        .await?;
        let Some(&last) = page.last() else { break };
        after = Some(last);
        for shard in page {
            bytes += migrate_one(store, shard).await?;
            moved += 1;
            let due = Duration::from_secs_f64(bytes as f64 / BYTES_PER_SECOND as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
    let shards_dir = store.legacy.shards_dir.clone();
    blocking(move || {
        remove_empty_tree(&shards_dir).map_err(|e| io_error("remove", &shards_dir, e))
    })
    .await?;
    store.legacy.present.store(false, Ordering::Release);
    Ok(moved)
}

/// Moves one shard file; returns its length.
async fn migrate_one(store: &Arc<ShardStore>, shard: ShardId) -> Result<u64, ChunkdError> {
    let guard = store.legacy.stripes[stripe_of(shard)].clone().lock_owned().await;
    let store = store.clone();
    blocking(move || {
        let path = legacy::shard_path_in(&store.legacy.shards_dir, shard);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            // Deleted since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error("open", &path, e)),
        };
        let len = file.metadata().map_err(|e| io_error("stat", &path, e))?.len();
        let found = Found::File { path, file, len, _stripe: guard };
        if store.move_into_volume(shard, &found)? {
            store.remove_shard_file(shard)?;
        }
        Ok(len)
    })
    .await
}

/// Removes the directories under `dir`, and `dir`, that hold no files.
fn remove_empty_tree(dir: &std::path::Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_empty_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => durable::sync_dir(dir.parent().unwrap_or(dir)),
        // Something other than a shard file is left there: keep it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(e),
    }
}
