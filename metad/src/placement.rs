//! Where a chunk's shards go: rendezvous (highest-random-weight) hashing of the chunk id over
//! the usable chunkds, spreading shards across zones first.
//!
//! Each chunkd gets a score `BLAKE3(chunk id ‖ chunkd id)`; the highest scores win. Adding or
//! removing a chunkd only changes the placement of chunks it wins or held, and the result is
//! recorded per chunk, so membership changes never move existing data implicitly.

use std::collections::HashSet;

use shardfs_chunkd::ChunkId;

use crate::store::ChunkdRecord;

fn score(chunk: &ChunkId, chunkd: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&chunk.0);
    hasher.update(chunkd.as_bytes());
    let hash = hasher.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Picks `count` distinct chunkds for `chunk`, one per zone while unused zones remain.
/// Returns `None` when fewer than `count` candidates exist.
pub fn place<'a>(
    chunk: &ChunkId,
    count: usize,
    candidates: &'a [ChunkdRecord],
) -> Option<Vec<&'a ChunkdRecord>> {
    if candidates.len() < count {
        return None;
    }
    let mut ranked: Vec<&ChunkdRecord> = candidates.iter().collect();
    ranked.sort_by_cached_key(|c| std::cmp::Reverse(score(chunk, &c.id)));
    let mut chosen: Vec<&ChunkdRecord> = Vec::with_capacity(count);
    let mut zones: HashSet<Option<&str>> = HashSet::new();
    // First pass: the best chunkd of each zone not yet used.
    for candidate in &ranked {
        if chosen.len() == count {
            break;
        }
        if zones.insert(candidate.zone.as_deref()) {
            chosen.push(candidate);
        }
    }
    // Second pass: fill up by score, zones repeating.
    for candidate in &ranked {
        if chosen.len() == count {
            break;
        }
        if !chosen.iter().any(|c| c.id == candidate.id) {
            chosen.push(candidate);
        }
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunkd(id: &str, zone: Option<&str>) -> ChunkdRecord {
        ChunkdRecord {
            id: id.into(),
            addr: format!("{id}:1"),
            zone: zone.map(Into::into),
            capacity_bytes: 1 << 40,
            free_bytes: 1 << 40,
            used_bytes: 0,
            shard_count: 0,
        }
    }

    #[test]
    fn distinct_deterministic_and_stable() {
        let all: Vec<_> = (0..8).map(|i| chunkd(&format!("c{i}"), None)).collect();
        let chunk = ChunkId::of(b"x");
        let a: Vec<_> = place(&chunk, 6, &all).unwrap().iter().map(|c| c.id.clone()).collect();
        let b: Vec<_> = place(&chunk, 6, &all).unwrap().iter().map(|c| c.id.clone()).collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 6);
        // Removing a chunkd that was not chosen changes nothing.
        let unchosen = all.iter().find(|c| !a.contains(&c.id)).unwrap().id.clone();
        let fewer: Vec<_> = all.iter().filter(|c| c.id != unchosen).cloned().collect();
        let c: Vec<_> = place(&chunk, 6, &fewer).unwrap().iter().map(|c| c.id.clone()).collect();
        assert_eq!(a, c);
        assert!(place(&chunk, 9, &all).is_none());
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
            let chosen = place(&chunk, 3, &all).unwrap();
            let zones: HashSet<_> = chosen.iter().map(|c| c.zone.clone()).collect();
            assert_eq!(zones.len(), 3, "chunk {i}");
        }
    }
}
