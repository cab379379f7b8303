//! The erasure codec: a chunk becomes `k` data shards and `m` parity shards, any `k` of
//! which rebuild it.
//!
//! The code is systematic: data shard `i` holds bytes `[i * L, (i + 1) * L)` of the chunk,
//! where `L = shard_len(chunk_len)`, with the last data shards zero-padded. Reading a chunk
//! whose data shards are all present is therefore a concatenation, with no decoding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};
use shardfs_rpc::sync::Lock as _;

/// Most shards one chunk may be cut into.
pub const MAX_SHARDS: usize = 32;

/// `k` data shards + `m` parity shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Encoding {
    pub k: u8,
    pub m: u8,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid encoding {k}+{m}: need k >= 1, m >= 1 and k + m <= {MAX_SHARDS}")]
    InvalidEncoding { k: u8, m: u8 },
    #[error("only {present} of the {needed} shards needed to rebuild the chunk are available")]
    NotEnoughShards { present: usize, needed: usize },
    #[error("shard has {got} bytes, expected {expected}")]
    WrongShardLength { got: usize, expected: usize },
}

impl Encoding {
    pub fn new(k: u8, m: u8) -> Result<Encoding, CodecError> {
        if k == 0 || m == 0 || k as usize + m as usize > MAX_SHARDS {
            return Err(CodecError::InvalidEncoding { k, m });
        }
        Ok(Encoding { k, m })
    }

    /// Checks an encoding that arrived from outside (wire, disk).
    pub fn validate(self) -> Result<Encoding, CodecError> {
        Encoding::new(self.k, self.m)
    }

    pub fn total(self) -> usize {
        self.k as usize + self.m as usize
    }

    /// Bytes in each shard of a chunk of `chunk_len` bytes. Never zero, so that even the
    /// empty chunk has well-formed shards.
    pub fn shard_len(self, chunk_len: usize) -> usize {
        chunk_len.div_ceil(self.k as usize).max(1)
    }

    fn codec(self) -> Arc<ReedSolomon> {
        static CODECS: OnceLock<Mutex<HashMap<Encoding, Arc<ReedSolomon>>>> = OnceLock::new();
        let mut codecs = CODECS.get_or_init(Default::default).locked();
        codecs
            .entry(self)
            .or_insert_with(|| {
                Arc::new(
                    ReedSolomon::new(self.k as usize, self.m as usize)
                        .expect("Encoding::new validated k and m"),
                )
            })
            .clone()
    }
}

/// Cuts `chunk` into `k + m` shards of equal length.
pub fn encode(encoding: Encoding, chunk: &[u8]) -> Vec<Vec<u8>> {
    let shard_len = encoding.shard_len(chunk.len());
    let mut shards: Vec<Vec<u8>> = (0..encoding.total())
        .map(|i| {
            let mut shard = vec![0u8; shard_len];
            if i < encoding.k as usize {
                let start = (i * shard_len).min(chunk.len());
                let end = ((i + 1) * shard_len).min(chunk.len());
                shard[..end - start].copy_from_slice(&chunk[start..end]);
            }
            shard
        })
        .collect();
    encoding.codec().encode(&mut shards).expect("shards have equal, non-zero length");
    shards
}

/// Rebuilds the chunk of `chunk_len` bytes from any `k` of its shards. `shards[i]` is
/// shard `i` if it is available; it must have exactly `shard_len(chunk_len)` bytes.
/// Missing data shards are filled in on success.
pub fn decode(
    encoding: Encoding,
    chunk_len: usize,
    shards: &mut [Option<Vec<u8>>],
) -> Result<Vec<u8>, CodecError> {
    let shard_len = encoding.shard_len(chunk_len);
    let k = encoding.k as usize;
    assert_eq!(shards.len(), encoding.total(), "one slot per shard");
    for shard in shards.iter().flatten() {
        if shard.len() != shard_len {
            return Err(CodecError::WrongShardLength { got: shard.len(), expected: shard_len });
        }
    }
    let present = shards.iter().filter(|s| s.is_some()).count();
    if present < k {
        return Err(CodecError::NotEnoughShards { present, needed: k });
    }
    if shards[..k].iter().any(Option::is_none) {
        encoding
            .codec()
            .reconstruct_data(shards)
            .map_err(|_| CodecError::NotEnoughShards { present, needed: k })?;
    }
    let mut chunk = Vec::with_capacity(shard_len * k);
    for shard in &shards[..k] {
        chunk.extend_from_slice(shard.as_ref().expect("data shards rebuilt"));
    }
    chunk.truncate(chunk_len);
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk_id::ChunkId;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// Every way of losing exactly `m` shards of a `k + m` code.
    fn loss_patterns(total: usize, m: usize) -> Vec<Vec<usize>> {
        (0u32..1 << total)
            .filter(|mask| mask.count_ones() as usize == m)
            .map(|mask| (0..total).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    #[test]
    fn any_m_losses_rebuild_the_chunk() {
        let encoding = Encoding::new(4, 2).unwrap();
        for len in [0, 1, 3, 4095, 4096, 65_537, 1_000_003, 4 << 20] {
            let chunk = pseudo_random(len, len as u64);
            let id = ChunkId::of(&chunk);
            let shards = encode(encoding, &chunk);
            assert_eq!(shards.len(), 6);
            for lost in loss_patterns(6, 2) {
                let mut slots: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
                for i in &lost {
                    slots[*i] = None;
                }
                let rebuilt = decode(encoding, len, &mut slots).unwrap();
                assert_eq!(ChunkId::of(&rebuilt), id, "len {len} lost {lost:?}");
            }
        }
    }

    #[test]
    fn other_encodings_round_trip() {
        for (k, m) in [(1, 2), (2, 1), (3, 3), (10, 4)] {
            let encoding = Encoding::new(k, m).unwrap();
            let chunk = pseudo_random(12_345, 9);
            let mut slots: Vec<Option<Vec<u8>>> =
                encode(encoding, &chunk).into_iter().map(Some).collect();
            for slot in slots.iter_mut().take(m as usize) {
                *slot = None;
            }
            assert_eq!(decode(encoding, chunk.len(), &mut slots).unwrap(), chunk);
        }
    }

    #[test]
    fn too_few_shards_is_an_error_not_a_panic() {
        let encoding = Encoding::new(4, 2).unwrap();
        let chunk = pseudo_random(10_000, 1);
        let mut slots: Vec<Option<Vec<u8>>> =
            encode(encoding, &chunk).into_iter().map(Some).collect();
        for slot in slots.iter_mut().take(3) {
            *slot = None;
        }
        assert_eq!(
            decode(encoding, chunk.len(), &mut slots),
            Err(CodecError::NotEnoughShards { present: 3, needed: 4 })
        );
        let mut wrong = vec![Some(vec![0u8; 3]); 6];
        assert!(matches!(
            decode(encoding, chunk.len(), &mut wrong),
            Err(CodecError::WrongShardLength { .. })
        ));
    }

    #[test]
    fn invalid_encodings_are_rejected() {
        assert!(Encoding::new(0, 2).is_err());
        assert!(Encoding::new(4, 0).is_err());
        assert!(Encoding::new(30, 3).is_err());
    }
}
