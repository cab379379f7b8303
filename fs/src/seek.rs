//! SEEK_DATA and SEEK_HOLE over a file's extents, at block granularity.
//!
//! Extents are byte-exact, but callers (cp, tar, backup tools, xfstests' seek tests) expect
//! holes and data to start on block boundaries as on a local disk: a block holding any byte
//! of data is data. So data ranges are widened to whole blocks before the search.

use shardfs_meta_api::proto::Extent;

use crate::error::{FsError, FsResult};

/// The granularity of holes.
pub const BLOCK: u64 = 4096;

/// Where SEEK_DATA (`data`) or SEEK_HOLE (`!data`) from `offset` lands in a file of `size`
/// bytes whose content is `extents` (sorted, not overlapping). ENXIO at or past the end,
/// and for SEEK_DATA when only a hole follows.
pub fn seek(extents: &[Extent], size: u64, offset: u64, data: bool) -> FsResult<u64> {
    if offset >= size {
        return Err(FsError::NoSuchOffset);
    }
    let ranges = block_ranges(extents, size);
    let first = ranges.partition_point(|(_, end)| *end <= offset);
    if data {
        return ranges
            .get(first)
            .map(|(start, _)| (*start).max(offset))
            .ok_or(FsError::NoSuchOffset);
    }
    // The end of the data run that holds `offset`, if any; the file's end is a hole too.
    match ranges.get(first) {
        Some((start, end)) if *start <= offset => Ok(*end),
        _ => Ok(offset),
    }
}

/// The extents widened to whole blocks (the last clipped to `size`), with adjacent and
/// overlapping ranges merged.
fn block_ranges(extents: &[Extent], size: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
    // Unwritten (fallocated) extents are holes, as on ext4 and XFS.
    for extent in extents.iter().filter(|e| e.len > 0 && !e.is_unwritten()) {
        let start = extent.offset / BLOCK * BLOCK;
        let end = extent.end().div_ceil(BLOCK).saturating_mul(BLOCK).min(size);
        match ranges.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = (*last_end).max(end),
            _ => ranges.push((start, end)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use shardfs_chunk_api::ChunkId;

    use super::*;

    fn extent(offset: u64, len: u64) -> Extent {
        Extent { offset, len, chunk: ChunkId::of(b""), chunk_offset: 0 }
    }

    #[test]
    fn data_and_holes_fall_on_block_boundaries() {
        // One byte at 5000, 100 bytes at 20000, file size 30000.
        let extents = [extent(5000, 1), extent(20000, 100)];
        let at = |offset, data| seek(&extents, 30000, offset, data);
        assert_eq!(at(0, true).unwrap(), 4096);
        assert_eq!(at(5000, true).unwrap(), 5000);
        assert_eq!(at(8192, true).unwrap(), 16384);
        assert!(matches!(at(20480, true), Err(FsError::NoSuchOffset)));
        assert_eq!(at(0, false).unwrap(), 0);
        assert_eq!(at(4096, false).unwrap(), 8192);
        assert_eq!(at(16384, false).unwrap(), 20480);
        assert_eq!(at(29999, false).unwrap(), 29999);
        assert!(matches!(at(30000, false), Err(FsError::NoSuchOffset)));
        // Data up to the end of the file: the hole is the end.
        assert_eq!(seek(&[extent(0, 10)], 10, 3, false).unwrap(), 10);
        // Neighbouring extents in one block merge.
        assert_eq!(seek(&[extent(0, 10), extent(4000, 200)], 9000, 0, false).unwrap(), 8192);
    }
}
