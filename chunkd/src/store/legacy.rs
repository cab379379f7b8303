//! Stores written before volumes: one file per shard, under `shards/<aa>/<bb>/`. They stay
//! readable, and a background task moves their shards into volumes (`migrate`).
//!
//! Paths are only ever built from a parsed `ShardId`, so no request can name a file outside
//! `shards/`. Names are parsed strictly (lowercase hex, canonical decimal index, in the
//! directory its id belongs in); anything else is ignored rather than guessed at.

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use shardfs_chunk_api::chunk_id::{ChunkId, ShardId};

pub const SHARDS_DIR: &str = "shards";

pub(super) fn shard_path_in(shards_dir: &Path, shard: ShardId) -> PathBuf {
    let [a, b, ..] = shard.chunk.0;
    shards_dir.join(format!("{a:02x}")).join(format!("{b:02x}")).join(file_name(shard))
}

pub(super) fn file_name(shard: ShardId) -> String {
    format!("{}.{}", shard.chunk.to_hex(), shard.index)
}

/// Inverse of `file_name`, accepting only the exact names it produces.
pub(super) fn parse_file_name(name: &str) -> Option<ShardId> {
    let (hex_id, index) = name.split_once('.')?;
    if hex_id.len() != 64 || !hex_id.bytes().all(is_lower_hex) {
        return None;
    }
    let chunk: ChunkId = hex_id.parse().ok()?;
    let canonical = !index.is_empty()
        && index.bytes().all(|c| c.is_ascii_digit())
        && (index == "0" || !index.starts_with('0'));
    if !canonical {
        return None;
    }
    Some(ShardId { chunk, index: index.parse().ok()? })
}

fn is_lower_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

/// Parses a fan-out directory name: exactly two lowercase hex digits.
fn parse_fanout(name: &str) -> Option<u8> {
    if name.len() != 2 || !name.bytes().all(is_lower_hex) {
        return None;
    }
    u8::from_str_radix(name, 16).ok()
}

/// Fan-out subdirectories of `dir`, sorted by byte value. A missing `dir` is empty.
fn fanout_dirs(dir: &Path) -> io::Result<Vec<(u8, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in read_dir_or_empty(dir)? {
        let entry = entry?;
        if let Some(byte) = entry.file_name().to_str().and_then(parse_fanout)
            && entry.file_type()?.is_dir()
        {
            dirs.push((byte, entry.path()));
        }
    }
    dirs.sort_unstable_by_key(|(byte, _)| *byte);
    Ok(dirs)
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Box<dyn Iterator<Item = io::Result<fs::DirEntry>>>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

/// Shard files in one leaf directory `<aa>/<bb>`, with their sizes, sorted by id. Files
/// whose id does not belong in this directory are skipped.
fn leaf_shards(dir: &Path, a: u8, b: u8) -> io::Result<Vec<(ShardId, u64)>> {
    let mut shards = Vec::new();
    for entry in read_dir_or_empty(dir)? {
        let entry = entry?;
        let Some(shard) = entry.file_name().to_str().and_then(parse_file_name) else {
            continue;
        };
        if shard.chunk.0[..2] != [a, b] {
            continue;
        }
        let metadata = entry.metadata()?;
        if metadata.is_file() {
            shards.push((shard, metadata.len()));
        }
    }
    shards.sort_unstable_by_key(|(shard, _)| *shard);
    Ok(shards)
}

/// Calls `visit` for every shard file in `shards_dir` after `after`, in `ShardId` order,
/// until it returns `false`.
pub(super) fn walk(
    shards_dir: &Path,
    after: Option<ShardId>,
    mut visit: impl FnMut(ShardId, u64) -> bool,
) -> io::Result<()> {
    // The fan-out is the id's first two bytes, so directory order is id order and whole
    // directories before `after` can be skipped unread.
    let start = after.map(|s| (s.chunk.0[0], s.chunk.0[1]));
    for (a, a_dir) in fanout_dirs(shards_dir)? {
        if start.is_some_and(|(sa, _)| a < sa) {
            continue;
        }
        for (b, b_dir) in fanout_dirs(&a_dir)? {
            if start.is_some_and(|start| (a, b).cmp(&start) == Ordering::Less) {
                continue;
            }
            for (shard, len) in leaf_shards(&b_dir, a, b)? {
                if after.is_some_and(|after| shard <= after) {
                    continue;
                }
                if !visit(shard, len) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Up to `limit` shards after `after`, in order.
pub(super) fn list(
    shards_dir: &Path,
    after: Option<ShardId>,
    limit: usize,
) -> io::Result<Vec<ShardId>> {
    let mut shards = Vec::new();
    if limit == 0 {
        return Ok(shards);
    }
    walk(shards_dir, after, |shard, _| {
        shards.push(shard);
        shards.len() < limit
    })?;
    Ok(shards)
}

/// Number of shard files and their total size.
pub(super) fn scan(shards_dir: &Path) -> io::Result<(u64, u64)> {
    let (mut count, mut bytes) = (0, 0);
    walk(shards_dir, None, |_, len| {
        count += 1;
        bytes += len;
        true
    })?;
    Ok((count, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_canonical_names_parse() {
        let shard = ShardId { chunk: ChunkId::of(b"x"), index: 12 };
        assert_eq!(parse_file_name(&file_name(shard)), Some(shard));
        let hex = shard.chunk.to_hex();
        for bad in [
            hex.clone(),
            format!("{hex}."),
            format!("{hex}.012"),
            format!("{hex}.+1"),
            format!("{hex}.256"),
            format!("{hex}.1.tmp"),
            format!("{}.1", hex.to_uppercase()),
            format!("{}.1", &hex[..62]),
            "../../etc/passwd.1".to_string(),
        ] {
            assert_eq!(parse_file_name(&bad), None, "{bad}");
        }
        assert_eq!(parse_file_name(&format!("{hex}.0")).map(|s| s.index), Some(0));
        assert_eq!(parse_fanout("0a"), Some(10));
        assert_eq!(parse_fanout("0A"), None);
        assert_eq!(parse_fanout("a"), None);
    }

    #[test]
    fn path_uses_first_two_id_bytes() {
        let mut id = [0u8; 32];
        id[0] = 0xab;
        id[1] = 0x01;
        let shard = ShardId { chunk: ChunkId(id), index: 3 };
        let path = shard_path_in(Path::new("/data/shards"), shard);
        assert_eq!(path, Path::new("/data/shards/ab/01").join(format!("{}.3", shard.chunk)));
    }
}
