//! Moving chunks between the client and the chunkds: the read path (fetch k shards, fall
//! back to parity, verify BLAKE3, cache) and the write path (hash, dedup, encode, put k+m
//! shards in parallel).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use shardfs_chunkd::client::{ChunkClientError, ChunkClientPool};
use shardfs_chunkd::proto::ChunkdError;
use shardfs_chunkd::{ChunkId, ShardId, codec};
use shardfs_metad::MetaClient;
use shardfs_metad::proto::{
    ChunkLocation, ChunkPlan, ChunkToWrite, Extent, INLINE_MAX, InlineChunk, ShardPlace,
    StoredChunk,
};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::dirty::Piece;
use crate::error::{FsError, FsResult};
use crate::metrics::ClientMetrics;

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
    metrics: Arc<ClientMetrics>,
}

impl ChunkIo {
    pub fn new(
        pool: Arc<ChunkClientPool>,
        meta: Arc<MetaClient>,
        cache_bytes: usize,
        metrics: Arc<ClientMetrics>,
    ) -> ChunkIo {
        let cache = ChunkCache { entries: LruCache::unbounded(), bytes: 0, limit: cache_bytes };
        let (cache, fetching) = (Mutex::new(cache), Mutex::new(HashMap::new()));
        ChunkIo { pool, meta, cache, fetching, metrics }
    }

    /// A chunk from the cache, counted as a hit or a miss.
    fn cached(&self, id: &ChunkId) -> Option<ChunkBytes> {
        let found = self.cache.lock().expect("chunk cache lock").get(id);
        match found {
            Some(_) => self.metrics.cache_hits.inc(),
            None => self.metrics.cache_misses.inc(),
        };
        found
    }

    /// Bytes of chunk content cached now.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.lock().expect("chunk cache lock").bytes as u64
    }

    /// Starts reading a chunk into the cache in the background, unless it is there or on
    /// its way already.
    pub fn prefetch(self: &Arc<Self>, location: &ChunkLocation) {
        let id = location.chunk;
        let known = self.cache.lock().expect("chunk cache lock").entries.contains(&id)
            || self.fetching.lock().expect("fetching lock").contains_key(&id);
        if !known {
            let (io, location) = (self.clone(), location.clone());
            tokio::spawn(async move {
                let _ = io.read(&location).await;
            });
        }
    }

    /// The content of a chunk, verified against its id.
    pub async fn read(&self, location: &ChunkLocation) -> FsResult<ChunkBytes> {
        if let Some(chunk) = self.cached(&location.chunk) {
            return Ok(chunk);
        }
        let cell =
            self.fetching.lock().expect("fetching lock").entry(location.chunk).or_default().clone();
        let result = cell
            .get_or_init(|| async {
                let fetched = self.fetch(location).await.map_err(|e| e.to_string());
                if let Ok(chunk) = &fetched {
                    self.cache
                        .lock()
                        .expect("chunk cache lock")
                        .insert(location.chunk, chunk.clone());
                }
                fetched
            })
            .await
            .clone();
        self.fetching.lock().expect("fetching lock").remove(&location.chunk);
        result.map_err(|reason| FsError::ChunkUnreadable { chunk: location.chunk.to_hex(), reason })
    }

    async fn fetch(&self, location: &ChunkLocation) -> Result<ChunkBytes, String> {
        if location.is_inline() {
            return self.fetch_inline(location).await;
        }
        let encoding = location.encoding;
        let k = encoding.k as usize;
        let len = location.len as usize;
        let shard_len = encoding.shard_len(len);
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; encoding.total()];
        let mut failures = Vec::new();
        // The code is systematic: the data shards alone are the chunk. Parity is fetched
        // only when a data shard cannot be had.
        let (data, parity): (Vec<&ShardPlace>, Vec<&ShardPlace>) =
            location.shards.iter().partition(|s| (s.index as usize) < k);
        for wave in [data, parity] {
            if slots.iter().filter(|s| s.is_some()).count() >= k {
                break;
            }
            let mut gets = JoinSet::new();
            for place in wave {
                let client = self.pool.get(&place.addr, &place.chunkd);
                let shard = ShardId { chunk: location.chunk, index: place.index };
                let place = place.clone();
                gets.spawn(async move { (place, client.get(shard).await) });
            }
            while let Some(joined) = gets.join_next().await {
                let (place, result) =
                    joined.map_err(|e| format!("shard fetch task failed: {e}"))?;
                match result {
                    Ok((got_encoding, got_len, bytes))
                        if got_encoding == encoding
                            && got_len == location.len
                            && bytes.len() == shard_len
                            && (place.index as usize) < slots.len() =>
                    {
                        slots[place.index as usize] = Some(bytes);
                    }
                    Ok(_) => {
                        failures.push(format!(
                            "shard {} on {}: wrong shape",
                            place.index, place.chunkd
                        ));
                        self.report_bad(location.chunk, &place);
                    }
                    Err(e) => {
                        if matches!(
                            e,
                            ChunkClientError::Chunkd(
                                ChunkdError::NotFound(_) | ChunkdError::Corrupt(_)
                            )
                        ) {
                            self.report_bad(location.chunk, &place);
                        }
                        debug!(chunk = %location.chunk, index = place.index, "shard unavailable: {e}");
                        failures.push(format!("shard {} on {}: {e}", place.index, place.chunkd));
                    }
                }
            }
        }
        let chunk_id = location.chunk;
        let chunk = tokio::task::spawn_blocking(move || {
            let chunk = codec::decode(encoding, len, &mut slots).map_err(|e| e.to_string())?;
            if ChunkId::of(&chunk) != chunk_id {
                return Err("rebuilt content does not match the chunk's BLAKE3 id".to_string());
            }
            Ok(chunk)
        })
        .await
        .map_err(|e| format!("decode task failed: {e}"))?
        .map_err(|e| format!("{e}; {}", failures.join("; ")))?;
        if !failures.is_empty() {
            warn!(chunk = %chunk_id, "read degraded: {}", failures.join("; "));
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

    /// Stores `pieces` as chunks: small ones go inline to metad with the commit, the
    /// already-stored ones are referenced (dedup), the others put on k+m chunkds. Returns
    /// what to commit.
    pub async fn store(&self, pieces: &[Piece]) -> FsResult<Written> {
        let hashed: Vec<(ChunkId, u64)> =
            pieces.iter().map(|p| (ChunkId::of(&p.data), p.data.len() as u64)).collect();
        let mut seen = HashSet::new();
        let (small, large): (Vec<_>, Vec<_>) = hashed
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| seen.insert(*id))
            .map(|(i, (chunk, len))| (i, ChunkToWrite { chunk: *chunk, len: *len }))
            .partition(|(_, chunk)| chunk.len <= INLINE_MAX);
        let inline = small
            .into_iter()
            .map(|(i, chunk)| InlineChunk { chunk: chunk.chunk, data: pieces[i].data.clone() })
            .collect();
        let mut stored = Vec::new();
        let mut pending = large;
        // chunkds whose puts failed: the next placement avoids them, so a write routes
        // around a chunkd that died before metad noticed.
        let mut avoid: Vec<String> = Vec::new();
        for attempt in 1..=PUT_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let chunks = pending.iter().map(|(_, c)| *c).collect();
            let plans = self.meta.prepare_write(chunks, avoid.clone()).await?;
            if plans.len() != pending.len() {
                return Err(FsError::MetaProtocol("prepare write answered the wrong count".into()));
            }
            let mut puts = JoinSet::new();
            for ((piece_index, chunk), plan) in pending.iter().zip(plans) {
                let ChunkPlan::Place { encoding, targets } = plan else {
                    continue;
                };
                if targets.len() != encoding.total() {
                    return Err(FsError::MetaProtocol("placement of the wrong width".into()));
                }
                let data = pieces[*piece_index].data.clone();
                let pool = self.pool.clone();
                let (piece_index, chunk) = (*piece_index, *chunk);
                puts.spawn(async move {
                    let result = put_chunk(pool, chunk, encoding, data, targets.clone()).await;
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
        let mut cache = self.cache.lock().expect("chunk cache lock");
        let extents = pieces
            .iter()
            .zip(&hashed)
            .map(|(piece, (chunk, len))| {
                cache.insert(*chunk, Arc::new(piece.data.clone()));
                Extent { offset: piece.offset, len: *len, chunk: *chunk, chunk_offset: 0 }
            })
            .collect();
        Ok(Written { stored, inline, extents })
    }
}

/// What a commit records: chunks put on chunkds, chunks kept inline, and the extents that
/// use them.
pub struct Written {
    pub stored: Vec<StoredChunk>,
    pub inline: Vec<InlineChunk>,
    pub extents: Vec<Extent>,
}

/// Encodes one chunk and puts all k+m shards; succeeds only if every put does.
/// Why a chunk's puts failed, and which chunkds could not be reached at all.
struct PutFailure {
    error: FsError,
    unreachable: Vec<String>,
}

async fn put_chunk(
    pool: Arc<ChunkClientPool>,
    chunk: ChunkToWrite,
    encoding: shardfs_chunkd::Encoding,
    data: Vec<u8>,
    places: Vec<ShardPlace>,
) -> Result<(), PutFailure> {
    let shards = tokio::task::spawn_blocking(move || codec::encode(encoding, &data))
        .await
        .map_err(|e| PutFailure {
            error: FsError::ChunkNotStored {
                chunk: chunk.chunk.to_hex(),
                reason: format!("encode task failed: {e}"),
            },
            unreachable: Vec::new(),
        })?;
    let mut puts = JoinSet::new();
    for (place, shard) in places.into_iter().zip(shards) {
        let client = pool.get(&place.addr, &place.chunkd);
        let id = ShardId { chunk: chunk.chunk, index: place.index };
        puts.spawn(async move { (place, client.put(id, encoding, chunk.len, shard).await) });
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
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;
