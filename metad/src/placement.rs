//! Where a chunk's shards go: rendezvous (highest-random-weight) hashing of the chunk id over
//! the usable chunkds, spreading shards across zones first.
//!
//! Each chunkd gets a score `BLAKE3(chunk id ‖ chunkd id)`; the highest scores win. Adding or
//! removing a chunkd only changes the placement of chunks it wins or held, and the result is
//! recorded per chunk, so membership changes never move existing data implicitly.

use std::collections::HashMap;

use shardfs_chunk_api::{ChunkId, Encoding};

use crate::store::ChunkdRecord;
use shardfs_meta_api::proto::{MetaError, ShardPlace};

/// Where the shards of a new chunk go: all k+m on distinct chunkds when that many are
/// usable; else, written degraded, shards `0..n` on the `n` usable ones as long as `n` is
/// at least `min_shards` (the rest are left to repair). Below that, the volume is full
/// if `full` chunkds would make up the difference, else unavailable.
pub fn place_new(
    chunk: &ChunkId,
    encoding: Encoding,
    min_shards: usize,
    usable: &[ChunkdRecord],
    full: usize,
) -> Result<Vec<ShardPlace>, MetaError> {
    let count = encoding.total().min(usable.len());
    if count < min_shards {
        let why = format!(
            "class {encoding} needs {min_shards} usable chunkds to store a chunk, {} are",
            usable.len()
        );
        return Err(if usable.len() + full >= min_shards {
            MetaError::NoSpace(format!("{why} ({full} more are full)"))
        } else {
            MetaError::Unavailable(format!("{why}: the others are down or being drained"))
        });
    }
    let chosen = place(chunk, count, usable, &[]).unwrap_or_default();
    Ok(chosen
        .iter()
        .enumerate()
        .map(|(index, c)| ShardPlace {
            index: index as u8,
            chunkd: c.id.clone(),
            addr: c.addr.clone(),
        })
        .collect())
}

fn score(chunk: &ChunkId, chunkd: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&chunk.0);
    hasher.update(chunkd.as_bytes());
    let hash = hasher.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Picks `count` distinct chunkds for `chunk`, keeping the number of shards per zone as even
/// as possible so losing one zone loses as few shards as the zones allow. `held` names the
/// zones that already hold shards of this chunk (for repair; empty for a new chunk). Returns
/// `None` when fewer than `count` candidates exist.
pub fn place<'a>(
    chunk: &ChunkId,
    count: usize,
    candidates: &'a [ChunkdRecord],
    held: &[Option<&str>],
) -> Option<Vec<&'a ChunkdRecord>> {
    if candidates.len() < count {
        return None;
    }
    let mut ranked: Vec<&ChunkdRecord> = candidates.iter().collect();
    ranked.sort_by_cached_key(|c| std::cmp::Reverse(score(chunk, &c.id)));
    let mut per_zone: HashMap<Option<&str>, usize> = HashMap::new();
    for zone in held {
        *per_zone.entry(*zone).or_default() += 1;
    }
    let mut chosen: Vec<&ChunkdRecord> = Vec::with_capacity(count);
    while chosen.len() < count {
        // The best-scoring candidate among those whose zone holds the fewest shards so far.
        let (position, _) = ranked
            .iter()
            .enumerate()
            .min_by_key(|(i, c)| (per_zone.get(&c.zone.as_deref()).copied().unwrap_or(0), *i))?;
        let pick = ranked.remove(position);
        *per_zone.entry(pick.zone.as_deref()).or_default() += 1;
        chosen.push(pick);
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn chunkd(id: &str, zone: Option<&str>) -> ChunkdRecord {
        ChunkdRecord {
            id: id.into(),
            addr: format!("{id}:1"),
            zone: zone.map(Into::into),
            capacity_bytes: 1 << 40,
            free_bytes: 1 << 40,
            ..ChunkdRecord::default()
        }
    }

    #[test]
    fn distinct_deterministic_and_stable() {
        let all: Vec<_> = (0..8).map(|i| chunkd(&format!("c{i}"), None)).collect();
        let chunk = ChunkId::of(b"x");
        let a: Vec<_> = place(&chunk, 6, &all, &[]).unwrap().iter().map(|c| c.id.clone()).collect();
        let b: Vec<_> = place(&chunk, 6, &all, &[]).unwrap().iter().map(|c| c.id.clone()).collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 6);
        // Removing a chunkd that was not chosen changes nothing.
        let unchosen = all.iter().find(|c| !a.contains(&c.id)).unwrap().id.clone();
        let fewer: Vec<_> = all.iter().filter(|c| c.id != unchosen).cloned().collect();
        let c: Vec<_> =
            place(&chunk, 6, &fewer, &[]).unwrap().iter().map(|c| c.id.clone()).collect();
        assert_eq!(a, c);
        assert!(place(&chunk, 9, &all, &[]).is_none());
    }

    #[test]
    fn spreads_over_zones_first() {
        let all = vec![
            chunkd("a1", Some("a")),
            chunkd("a2", Some("a")),
            chunkd("a3", Some("a")),
            chunkd("b1", Some("b")),
            chunkd("c1", Some("c")),
        ];
        for i in 0..50u32 {
            let chunk = ChunkId::of(&i.to_le_bytes());
            let chosen = place(&chunk, 3, &all, &[]).unwrap();
            let zones: HashSet<_> = chosen.iter().map(|c| c.zone.clone()).collect();
            assert_eq!(zones.len(), 3, "chunk {i}");
        }
    }

    #[test]
    fn balances_zones_and_counts_held_shards() {
        let all: Vec<_> = ["a", "b", "c"]
            .iter()
            .flat_map(|z| (0..3).map(move |i| chunkd(&format!("{z}{i}"), Some(z))))
            .collect();
        for i in 0..50u32 {
            let chunk = ChunkId::of(&i.to_le_bytes());
            let chosen = place(&chunk, 6, &all, &[]).unwrap();
            for zone in ["a", "b", "c"] {
                let n = chosen.iter().filter(|c| c.zone.as_deref() == Some(zone)).count();
                assert_eq!(n, 2, "chunk {i} zone {zone}");
            }
            // Repair of one shard when zone a already holds two and b one: goes to c.
            let held = [Some("a"), Some("a"), Some("b"), Some("c"), Some("b")];
            let target = place(&chunk, 1, &all, &held).unwrap();
            assert_eq!(target[0].zone.as_deref(), Some("c"), "chunk {i}");
        }
    }

    #[test]
    fn new_chunks_go_degraded_down_to_min_shards_then_fail_by_cause() {
        let encoding = Encoding::Rs { k: 4, m: 2 };
        let all: Vec<_> = (0..8).map(|i| chunkd(&format!("c{i}"), None)).collect();
        let chunk = ChunkId::of(b"y");
        let width = |n: usize| place_new(&chunk, encoding, 5, &all[..n], 0).map(|p| p.len());
        assert_eq!(width(8), Ok(6));
        assert_eq!(width(6), Ok(6));
        let degraded = place_new(&chunk, encoding, 5, &all[..5], 0).unwrap();
        assert_eq!(degraded.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert!(matches!(width(4), Err(MetaError::Unavailable(_))));
        let full = place_new(&chunk, encoding, 5, &all[..4], 1);
        assert!(matches!(full, Err(MetaError::NoSpace(_))));
    }
}
