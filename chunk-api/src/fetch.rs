//! Reading a chunk back from its shards. Every class is systematic, so one copy of a
//! replicated chunk, or the data shards of a coded one, are the chunk: they are fetched
//! first, and parity only for the data shards that could not be had. What is rebuilt is checked
//! against the chunk's BLAKE3 id before anyone sees it. Used by the client's reads and by
//! metad's repair alike.

use serde::{Deserialize, Serialize};
use shardfs_rpc::sync::blocking;
use tokio::task::JoinSet;

use crate::chunk_id::{ChunkId, ShardId};
use crate::client::{ChunkClientError, ChunkClientPool};
use crate::codec::{self, Encoding};
use crate::proto::ChunkdError;

/// Where one shard lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlace {
    pub index: u8,
    pub chunkd: String,
    /// Current address of that chunkd, if it is registered.
    pub addr: String,
}

/// A chunk to read: its id, length and encoding.
#[derive(Clone, Copy, Debug)]
pub struct ChunkShape {
    pub chunk: ChunkId,
    pub len: u64,
    pub encoding: Encoding,
}

/// A shard that could not be had, and why.
#[derive(Clone, Debug)]
pub struct Failure {
    pub place: ShardPlace,
    /// The chunkd has the shard missing or corrupt, or sent one of the wrong shape: worth
    /// telling metad, whose repair rebuilds it. (An unreachable chunkd is not.)
    pub bad: bool,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} on {}: {}", self.place.index, self.place.chunkd, self.reason)
    }
}

/// What a fetch got: the chunk's verified content, or why it could not be rebuilt; and the
/// shards it could not have on the way (a read that succeeds with failures was degraded).
pub struct Fetched {
    pub content: Result<Vec<u8>, String>,
    pub failures: Vec<Failure>,
}

/// Fetches the shards the chunk needs from `places`: one copy of a replicated chunk (the
/// next if it fails), the data shards of a coded one, all at once, then the others only if
/// a data shard could not be had; rebuilds the chunk and verifies it against its id.
pub async fn fetch(pool: &ChunkClientPool, shape: ChunkShape, places: &[ShardPlace]) -> Fetched {
    let ChunkShape { chunk, len, encoding } = shape;
    let shard_len = encoding.shard_len(len as usize);
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; encoding.total()];
    let mut failures = Vec::new();
    let waves: Vec<Vec<&ShardPlace>> = match encoding {
        Encoding::Replicas { .. } => places.iter().map(|place| vec![place]).collect(),
        _ => {
            let (data, parity) =
                places.iter().partition(|s| encoding.holds_data(codec::position(s.index)));
            vec![data, parity]
        }
    };
    for wave in waves {
        if enough(encoding, &slots) {
            break;
        }
        let mut gets = JoinSet::new();
        for place in wave {
            let client = pool.get(&place.addr, &place.chunkd);
            let shard = ShardId { chunk, index: place.index };
            let place = place.clone();
            gets.spawn(async move { (place, client.get(shard).await) });
        }
        while let Some(joined) = gets.join_next().await {
            let (place, result) = match joined {
                Ok(got) => got,
                Err(e) => {
                    let content = Err(format!("shard fetch task failed: {e}"));
                    return Fetched { content, failures };
                }
            };
            let failure = |bad, reason| Failure { place: place.clone(), bad, reason };
            let position = codec::position(place.index);
            match result {
                Ok((got_encoding, got_len, bytes))
                    if got_encoding == encoding
                        && got_len == len
                        && bytes.len() == shard_len
                        && position < slots.len() =>
                {
                    slots[position] = Some(bytes);
                }
                Ok(_) => failures.push(failure(true, "wrong shape".to_string())),
                Err(e) => {
                    let bad = matches!(
                        e,
                        ChunkClientError::Chunkd(
                            ChunkdError::NotFound(_) | ChunkdError::Corrupt(_)
                        )
                    );
                    failures.push(failure(bad, e.to_string()));
                }
            }
        }
    }
    let rebuilt = blocking(move || {
        let content =
            codec::decode(encoding, len as usize, &mut slots).map_err(|e| e.to_string())?;
        if ChunkId::of(&content) != chunk {
            return Err("rebuilt content does not match the chunk's BLAKE3 id".to_string());
        }
        Ok(content)
    })
    .await;
    let content = match rebuilt {
        Ok(Ok(content)) => Ok(content),
        Ok(Err(e)) => {
            let shards: Vec<String> = failures.iter().map(Failure::to_string).collect();
            Err(if shards.is_empty() { e } else { format!("{e}; {}", shards.join("; ")) })
        }
        Err(e) => Err(format!("decode task failed: {e}")),
    };
    Fetched { content, failures }
}

/// Whether `slots` hold the chunk's bytes as they are: one copy, or every data shard.
fn enough(encoding: Encoding, slots: &[Option<Vec<u8>>]) -> bool {
    match encoding {
        Encoding::Replicas { .. } => slots.iter().any(Option::is_some),
        _ => slots[..encoding.needed()].iter().all(Option::is_some),
    }
}
