//! Moving chunks between the client and the chunkds: the read paths (a whole chunk: fetch k
//! shards, fall back to parity, verify BLAKE3, cache; part of a chunk: fetch the segments
//! holding it from one data shard, verify them through the chunk's hash tree) and the write
//! path (hash, dedup, encode, put k+m shards in parallel).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use shardfs_chunk_api::client::{ChunkClientError, ChunkClientPool};
use shardfs_chunk_api::proto::ChunkdError;
use shardfs_chunk_api::{ChunkId, ShardId, codec, fetch, hash_tree};
use shardfs_meta_api::MetaClient;
use shardfs_meta_api::proto::{
    ChunkLocation, ChunkPlan, ChunkToWrite, Extent, INLINE_MAX, InlineChunk, Ino, ShardPlace,
    StoredChunk,
};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::dirty::Piece;
use crate::error::{FsError, FsResult};
use crate::metrics::ClientMetrics;
use shardfs_rpc::sync::Lock as _;
use shardfs_rpc::sync::blocking;

pub type ChunkBytes = Arc<Vec<u8>>;

/// Verified chunks, most recently used kept, bounded in bytes.
struct ChunkCache {
    entries: LruCache<ChunkId, ChunkBytes>,
    bytes: usize,
    limit: usize,
}

impl ChunkCache {
    fn get(&mut self, id: &ChunkId) -> Option<ChunkBytes> {
        self.entries.get(id).cloned()
    }

    fn insert(&mut self, id: ChunkId, chunk: ChunkBytes) {
        if chunk.len() > self.limit {
            return;
        }
        self.bytes += chunk.len();
        if let Some(old) = self.entries.put(id, chunk) {
            self.bytes -= old.len();
        }
        while self.bytes > self.limit {
            let Some((_, evicted)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= evicted.len();
        }
    }
}

type Fetch = Arc<OnceCell<Result<ChunkBytes, String>>>;

pub struct ChunkIo {
    pool: Arc<ChunkClientPool>,
    meta: Arc<MetaClient>,
    cache: Mutex<ChunkCache>,
    /// Fetches under way, so concurrent readers of one chunk share one fetch.
    fetching: Mutex<HashMap<ChunkId, Fetch>>,
    /// Hash trees of chunks read in parts, checked against their ids.
    trees: Mutex<LruCache<ChunkId, Arc<Vec<u8>>>>,
    metrics: Arc<ClientMetrics>,
}

/// Hash trees kept: 8 KiB each at the default 4 MiB chunks, so 8 MiB in all.
const TREES_KEPT: usize = 1024;

impl ChunkIo {
    pub fn new(
        pool: Arc<ChunkClientPool>,
        meta: Arc<MetaClient>,
        cache_bytes: usize,
        metrics: Arc<ClientMetrics>,
    ) -> ChunkIo {
        let cache = ChunkCache { entries: LruCache::unbounded(), bytes: 0, limit: cache_bytes };
        let (cache, fetching) = (Mutex::new(cache), Mutex::new(HashMap::new()));
        let trees = Mutex::new(LruCache::new(NonZeroUsize::new(TREES_KEPT).expect("not zero")));
        ChunkIo { pool, meta, cache, fetching, trees, metrics }
    }

    /// A chunk from the cache, counted as a hit or a miss.
    fn cached(&self, id: &ChunkId) -> Option<ChunkBytes> {
        let found = self.cache.locked().get(id);
        match found {
            Some(_) => self.metrics.cache_hits.inc(),
            None => self.metrics.cache_misses.inc(),
        };
        found
    }

    /// Bytes of chunk content cached now.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.locked().bytes as u64
    }

    /// Starts reading a chunk into the cache in the background, unless it is there or on
    /// its way already.
    pub fn prefetch(self: &Arc<Self>, location: &ChunkLocation) {
        let id = location.chunk;
        let known =
            self.cache.locked().entries.contains(&id) || self.fetching.locked().contains_key(&id);
        if !known {
            let (io, location) = (self.clone(), location.clone());
            tokio::spawn(async move {
                let _ = io.read(&location).await;
            });
        }
    }

    /// Copies bytes `[in_chunk, in_chunk + buf.len())` of a chunk into `buf`. With `whole`
    /// (a sequential reader, who will want the rest) the whole chunk is read and cached;
    /// otherwise, unless the chunk is cached, only the segments holding the bytes are
    /// fetched, from the data shard that has them. Whatever cannot be read that way (a
    /// shard without a hash tree, a range across two shards, an unreachable chunkd, bytes
    /// that fail verification) is read whole.
    pub async fn read_into(
        &self,
        location: &ChunkLocation,
        in_chunk: usize,
        buf: &mut [u8],
        whole: bool,
    ) -> FsResult<()> {
        let end = in_chunk + buf.len();
        let cached = self.cached(&location.chunk);
        if !whole
            && cached.is_none()
            && let Some((from, bytes)) = self.read_segments(location, in_chunk, end).await
        {
            buf.copy_from_slice(&bytes[in_chunk - from..end - from]);
            return Ok(());
        }
        let chunk = match cached {
            Some(chunk) => chunk,
            None => self.fetch_shared(location).await?,
        };
        let source = chunk.get(in_chunk..end).ok_or_else(|| FsError::ChunkUnreadable {
            chunk: location.chunk.to_hex(),
            reason: "extent reaches past the chunk's end".into(),
        })?;
        buf.copy_from_slice(source);
        Ok(())
    }

    /// The chunk's bytes from the start of the segment holding `start` to the end of the one
    /// holding `end - 1`, with the offset they start at, fetched from one data shard and
    /// verified; `None` if that cannot be done.
    async fn read_segments(
        &self,
        location: &ChunkLocation,
        start: usize,
        end: usize,
    ) -> Option<(usize, Vec<u8>)> {
        let (chunk, len) = (location.chunk, location.len);
        if location.is_inline() || hash_tree::tree_len(len) == 0 || end as u64 > len {
            return None;
        }
        let first = start as u64 / hash_tree::SEGMENT_LEN;
        let from = first * hash_tree::SEGMENT_LEN;
        let to = (end as u64).next_multiple_of(hash_tree::SEGMENT_LEN).min(len);
        let encoding = location.encoding;
        let (holders, in_shard) = encoding.holders(from, len);
        if in_shard + (to - from) > encoding.shard_len(len as usize) as u64 {
            return None;
        }
        // Of several holders (replicas), one chosen by the chunk, so that readers of
        // different chunks spread over the copies.
        let mut candidates: Vec<&ShardPlace> = (location.shards.iter())
            .filter(|s| holders.contains(&codec::position(s.index)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let place = candidates.swap_remove(usize::from(chunk.0[0]) % candidates.len());
        let known = self.trees.locked().get(&chunk).cloned();
        let shard = ShardId { chunk, index: place.index };
        let fetched = self
            .pool
            .get(&place.addr, &place.chunkd)
            .get_range(shard, in_shard, (to - from) as u32, known.is_none())
            .await;
        let (data, tree) =
            fetched.inspect_err(|e| debug!(%shard, "ranged read failed: {e}")).ok()?;
        let tree = match known {
            Some(tree) => tree,
            None if hash_tree::root(&tree, len) == Some(chunk) => {
                let tree = Arc::new(tree);
                self.trees.locked().put(chunk, tree.clone());
                tree
            }
            None => {
                warn!(%shard, "the hash tree from chunkd {} does not match the chunk", place.chunkd);
                return None;
            }
        };
        if data.len() as u64 != to - from || !hash_tree::verify_segments(&tree, len, first, &data) {
            warn!(%shard, "bytes from chunkd {} fail verification; reading the whole chunk", place.chunkd);
            return None;
        }
        self.metrics.range_reads.inc();
        Some((from as usize, data))
    }

    /// The content of a chunk, verified against its id.
    pub async fn read(&self, location: &ChunkLocation) -> FsResult<ChunkBytes> {
        match self.cached(&location.chunk) {
            Some(chunk) => Ok(chunk),
            None => self.fetch_shared(location).await,
        }
    }

    /// Fetches a chunk into the cache, sharing the fetch with concurrent readers.
    async fn fetch_shared(&self, location: &ChunkLocation) -> FsResult<ChunkBytes> {
        let cell = self.fetching.locked().entry(location.chunk).or_default().clone();
        let result = cell
            .get_or_init(|| async {
                let fetched = self.fetch(location).await.map_err(|e| e.to_string());
                if let Ok(chunk) = &fetched {
                    self.cache.locked().insert(location.chunk, chunk.clone());
                }
                fetched
            })
            .await
            .clone();
        self.fetching.locked().remove(&location.chunk);
        result.map_err(|reason| FsError::ChunkUnreadable { chunk: location.chunk.to_hex(), reason })
    }

    async fn fetch(&self, location: &ChunkLocation) -> Result<ChunkBytes, String> {
        if location.is_inline() {
            return self.fetch_inline(location).await;
        }
        let fetched = fetch::fetch(&self.pool, location.shape(), &location.shards).await;
        for failure in &fetched.failures {
            debug!(chunk = %location.chunk, "{failure}");
            if failure.bad {
                self.report_bad(location.chunk, &failure.place);
            }
        }
        let chunk = fetched.content?;
        if !fetched.failures.is_empty() {
            let failures: Vec<String> = fetched.failures.iter().map(|f| f.to_string()).collect();
            warn!(chunk = %location.chunk, "read degraded: {}", failures.join("; "));
        }
        Ok(Arc::new(chunk))
    }

    /// An inline chunk's content, from the layout or from metad, verified against its id.
    async fn fetch_inline(&self, location: &ChunkLocation) -> Result<ChunkBytes, String> {
        let data = match &location.inline {
            Some(data) => data.clone(),
            None => self.meta.read_inline(location.chunk).await.map_err(|e| e.to_string())?,
        };
        if data.len() as u64 != location.len || ChunkId::of(&data) != location.chunk {
            return Err("inline content does not match the chunk's length and BLAKE3 id".into());
        }
        Ok(Arc::new(data))
    }

    fn report_bad(&self, chunk: ChunkId, place: &ShardPlace) {
        let meta = self.meta.clone();
        let shard = ShardId { chunk, index: place.index };
        let chunkd = place.chunkd.clone();
        tokio::spawn(async move {
            if let Err(e) = meta.report_bad_shard(shard, chunkd).await {
                warn!(%shard, "could not report bad shard: {e}");
            }
        });
    }

    /// Stores `pieces` of file `ino` as chunks: small ones go inline to metad with the
    /// commit, the already-stored ones are referenced (dedup), the others put on chunkds in
    /// the class metad names for the file. Returns what to commit.
    pub async fn store(&self, ino: Ino, pieces: &[Piece]) -> FsResult<Written> {
        // The id and the hash tree come from one pass over the bytes, the pieces hashed in
        // parallel off the runtime's threads.
        let mut hashing = JoinSet::new();
        for (i, piece) in pieces.iter().enumerate() {
            let data = piece.data.clone();
            hashing.spawn_blocking(move || (i, hash_tree::build(&data)));
        }
        let mut hashed: Vec<(ChunkId, u64, Arc<Vec<u8>>)> =
            vec![(ChunkId([0; 32]), 0, Arc::default()); pieces.len()];
        while let Some(joined) = hashing.join_next().await {
            let (i, (id, tree)) =
                joined.map_err(|e| FsError::MetaProtocol(format!("hash task failed: {e}")))?;
            hashed[i] = (id, pieces[i].data.len() as u64, Arc::new(tree));
        }
        let mut seen = HashSet::new();
        let (small, large): (Vec<_>, Vec<_>) = hashed
            .iter()
            .enumerate()
            .filter(|(_, (id, _, _))| seen.insert(*id))
            .map(|(i, (chunk, len, _))| (i, ChunkToWrite { chunk: *chunk, len: *len }))
            .partition(|(_, chunk)| chunk.len <= INLINE_MAX);
        let inline = small
            .into_iter()
            .map(|(i, chunk)| InlineChunk { chunk: chunk.chunk, data: pieces[i].data.to_vec() })
            .collect();
        let (mut stored, mut found) = (Vec::new(), Vec::new());
        let mut pending = large;
        // chunkds whose puts failed: the next placement avoids them, so a write routes
        // around a chunkd that died before metad noticed.
        let mut avoid: Vec<String> = Vec::new();
        for attempt in 1..=PUT_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let chunks = pending.iter().map(|(_, c)| *c).collect();
            let plans = self.meta.prepare_write(ino, chunks, avoid.clone()).await?;
            if plans.len() != pending.len() {
                return Err(FsError::MetaProtocol("prepare write answered the wrong count".into()));
            }
            let mut puts = JoinSet::new();
            for ((piece_index, chunk), plan) in pending.iter().zip(plans) {
                let (encoding, targets) = match plan {
                    ChunkPlan::Place { encoding, targets } => (encoding, targets),
                    ChunkPlan::Stored(location) => {
                        found.push(location);
                        continue;
                    }
                };
                // All its shards, or (metad writing degraded while chunkds are down) at
                // least those holding its data, each index once.
                let indexes = targets.iter().map(|t| t.index as usize);
                if targets.len() < encoding.needed()
                    || indexes.clone().any(|i| i >= encoding.total())
                    || indexes.collect::<HashSet<_>>().len() != targets.len()
                {
                    return Err(FsError::MetaProtocol("placement of the wrong shape".into()));
                }
                let data = pieces[*piece_index].data.clone();
                let tree = hashed[*piece_index].2.clone();
                let pool = self.pool.clone();
                let (piece_index, chunk) = (*piece_index, *chunk);
                puts.spawn(async move {
                    let shape = (encoding, tree);
                    let result = put_chunk(pool, chunk, shape, data, targets.clone()).await;
                    (
                        piece_index,
                        chunk,
                        StoredChunk {
                            chunk: chunk.chunk,
                            len: chunk.len,
                            encoding,
                            shards: targets,
                        },
                        result,
                    )
                });
            }
            let mut failed = Vec::new();
            let mut last_error = None;
            while let Some(joined) = puts.join_next().await {
                let (piece_index, chunk, placed, result) =
                    joined.map_err(|e| FsError::MetaProtocol(format!("put task failed: {e}")))?;
                match result {
                    Ok(()) => stored.push(placed),
                    Err(PutFailure { error, unreachable }) => {
                        avoid.extend(unreachable);
                        failed.push((piece_index, chunk));
                        last_error = Some(error);
                    }
                }
            }
            pending = failed;
            match last_error {
                None => break,
                // Only unreachable chunkds are worth another placement.
                Some(error) if attempt == PUT_ATTEMPTS || avoid.is_empty() => return Err(error),
                Some(error) => debug!("retrying {} chunks elsewhere: {error}", pending.len()),
            }
        }
        // Written chunks are not cached: the kernel keeps the pages just written, and a
        // writer filling the cache would hold a cache's worth of memory for nothing.
        let extents = pieces
            .iter()
            .zip(&hashed)
            .map(|(piece, (chunk, len, _))| Extent {
                offset: piece.offset,
                len: *len,
                chunk: *chunk,
                chunk_offset: 0,
            })
            .collect();
        Ok(Written { stored, found, inline, extents })
    }
}

/// What a commit records: chunks put on chunkds, chunks kept inline, and the extents that
/// use them.
pub struct Written {
    pub stored: Vec<StoredChunk>,
    /// Chunks stored before (deduplicated), where metad said they are.
    pub found: Vec<ChunkLocation>,
    pub inline: Vec<InlineChunk>,
    pub extents: Vec<Extent>,
}

impl Written {
    /// The extents written and where each one's chunk is, if known for every chunk they use,
    /// ordered as a [`Layout`](shardfs_meta_api::proto::Layout) orders them: extents by
    /// offset, chunks by id.
    pub fn content(&self) -> Option<(Vec<Extent>, Vec<ChunkLocation>)> {
        let stored = self.stored.iter().map(StoredChunk::location);
        let inline = self.inline.iter().map(InlineChunk::location);
        let mut chunks: Vec<ChunkLocation> =
            stored.chain(self.found.iter().cloned()).chain(inline).collect();
        chunks.sort_unstable_by_key(|c| c.chunk);
        chunks.dedup_by_key(|c| c.chunk);
        let known = |e: &Extent| chunks.binary_search_by_key(&e.chunk, |c| c.chunk).is_ok();
        let mut extents = self.extents.clone();
        extents.sort_unstable_by_key(|e| e.offset);
        extents.iter().all(known).then_some((extents, chunks))
    }
}

/// Why a chunk's puts failed, and which chunkds could not be reached at all.
struct PutFailure {
    error: FsError,
    unreachable: Vec<String>,
}

/// Encodes one chunk and puts the shards `places` name (all k+m, or fewer when written
/// degraded); succeeds only if every put does. `shape` is the chunk's encoding and its hash
/// tree.
async fn put_chunk(
    pool: Arc<ChunkClientPool>,
    chunk: ChunkToWrite,
    (encoding, tree): (shardfs_chunk_api::Encoding, Arc<Vec<u8>>),
    data: ChunkBytes,
    places: Vec<ShardPlace>,
) -> Result<(), PutFailure> {
    let shards =
        blocking(move || codec::encode(encoding, &data)).await.map_err(|e| PutFailure {
            error: FsError::ChunkNotStored {
                chunk: chunk.chunk.to_hex(),
                reason: format!("encode task failed: {e}"),
            },
            unreachable: Vec::new(),
        })?;
    let mut shards: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
    let mut puts = JoinSet::new();
    for place in places {
        let position = codec::position(place.index);
        let Some(shard) = shards.get_mut(position).and_then(Option::take) else {
            continue;
        };
        let client = pool.get(&place.addr, &place.chunkd);
        let id = ShardId { chunk: chunk.chunk, index: place.index };
        let tree = tree.clone();
        puts.spawn(async move { (place, client.put(id, encoding, chunk.len, shard, &tree).await) });
    }
    let mut failures = Vec::new();
    let mut unreachable = Vec::new();
    let mut disk_full = false;
    while let Some(joined) = puts.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((place, Err(e))) => {
                disk_full |= matches!(e, ChunkClientError::Chunkd(ChunkdError::NoSpace(_)));
                // Another chunkd at its address: the one meant is gone from there.
                if matches!(e, ChunkClientError::Rpc(_)) || e.is_wrong_chunkd() {
                    unreachable.push(place.chunkd.clone());
                }
                failures.push(format!("shard {} on {}: {e}", place.index, place.addr))
            }
            Err(e) => failures.push(format!("put task failed: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        let reason = failures.join("; ");
        warn!(chunk = %chunk.chunk, "write refused, redundancy not reached: {reason}");
        let chunk = chunk.chunk.to_hex();
        let error = if disk_full {
            FsError::NoSpace { chunk, reason }
        } else {
            FsError::ChunkNotStored { chunk, reason }
        };
        Err(PutFailure { error, unreachable })
    }
}

/// Placements tried for a chunk before a write fails.
const PUT_ATTEMPTS: usize = 3;

/// The cache size used when none is configured.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use shardfs_chunk_api::Encoding;

    fn extent(offset: u64, len: u64, chunk: ChunkId) -> Extent {
        Extent { offset, len, chunk, chunk_offset: 0 }
    }

    #[test]
    fn content_is_ordered_as_a_layout_and_known_only_for_every_chunk() {
        let (a, b, c) = (ChunkId::of(b"a"), ChunkId::of(b"b"), ChunkId::of(b"c"));
        let encoding = Encoding::Rs { k: 4, m: 2 };
        let stored = |chunk| StoredChunk { chunk, len: 10, encoding, shards: Vec::new() };
        let mut written = Written {
            stored: vec![stored(b), stored(a)],
            found: Vec::new(),
            inline: Vec::new(),
            extents: vec![extent(20, 10, a), extent(0, 10, b), extent(10, 10, c)],
        };
        assert!(written.content().is_none(), "c's place is not known");
        written.found.push(stored(c).location());
        let (extents, chunks) = written.content().unwrap();
        assert_eq!(extents.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 10, 20]);
        let mut ids = vec![a, b, c];
        ids.sort();
        assert_eq!(chunks.iter().map(|c| c.chunk).collect::<Vec<_>>(), ids);
    }
}
