//! A chunk's BLAKE3 hash tree, cut at segments, so that part of a chunk can be verified
//! against the chunk's id without the rest of it.
//!
//! BLAKE3 is itself a binary tree over 1 KiB chunks, left-balanced: the left subtree of any
//! node holds the largest power of two of chunks that leaves something on the right. Every
//! `SEGMENT_LEN`-aligned run of `SEGMENT_LEN` bytes (and the shorter run at the end) is
//! therefore a whole subtree, and its chaining value, merged with its neighbours' up the
//! tree, gives the chunk's id. The *tree* of a chunk is the list of its segments' chaining
//! values, 32 bytes each, in order: 256 of them (8 KiB) for a 4 MiB chunk. Chunks of one
//! segment or less have an empty tree; their id covers them whole.
//!
//! A reader holding a tree checks it once against the chunk id ([`root`]), then checks any
//! segment it fetches against its entry ([`verify_segments`]): a 4 KiB read costs a 16 KiB
//! fetch and hash instead of the whole chunk.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::chunk_id::ChunkId;
use crate::codec::{self, Encoding};

/// Bytes per segment: a power of two of BLAKE3's 1 KiB chunks. Shard format 2 fixes it.
pub const SEGMENT_LEN: u64 = 16 * 1024;
/// Bytes per tree entry (one chaining value).
pub const ENTRY_LEN: usize = 32;

/// Segments of a chunk of `chunk_len` bytes.
pub fn segments(chunk_len: u64) -> u64 {
    chunk_len.div_ceil(SEGMENT_LEN)
}

/// Bytes of the tree of a chunk of `chunk_len` bytes: zero for a chunk of one segment.
pub fn tree_len(chunk_len: u64) -> u64 {
    if chunk_len <= SEGMENT_LEN { 0 } else { segments(chunk_len) * ENTRY_LEN as u64 }
}

/// The part of a chunk's `tree` that shard `index` stores: all of it in a shard holding
/// data (a data shard, a replica), nothing in a parity shard.
pub fn for_shard(tree: &[u8], index: u8, encoding: Encoding) -> &[u8] {
    if encoding.holds_data(codec::position(index)) { tree } else { &[] }
}

/// The id of `chunk` and its tree, in one pass over the bytes.
pub fn build(chunk: &[u8]) -> (ChunkId, Vec<u8>) {
    if chunk.len() as u64 <= SEGMENT_LEN {
        return (ChunkId::of(chunk), Vec::new());
    }
    let mut tree = Vec::with_capacity(tree_len(chunk.len() as u64) as usize);
    for (i, segment) in chunk.chunks(SEGMENT_LEN as usize).enumerate() {
        tree.extend_from_slice(&segment_cv(i as u64, segment));
    }
    let id = root(&tree, chunk.len() as u64).expect("a tree built for this length");
    (id, tree)
}

/// The chunk id that `tree` hashes to for a chunk of `chunk_len` bytes, or `None` if the
/// tree has the wrong length for it.
pub fn root(tree: &[u8], chunk_len: u64) -> Option<ChunkId> {
    if chunk_len <= SEGMENT_LEN || tree.len() as u64 != tree_len(chunk_len) {
        return None;
    }
    let cvs: Vec<ChainingValue> = tree
        .chunks_exact(ENTRY_LEN)
        .map(|entry| entry.try_into().expect("entries are 32 bytes"))
        .collect();
    let left = left_subtree_len(chunk_len);
    let split = (left / SEGMENT_LEN) as usize;
    let (l, r) = (subtree(&cvs[..split], left), subtree(&cvs[split..], chunk_len - left));
    Some(ChunkId(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()))
}

/// Whether `data`, the chunk's bytes from the start of segment `first` up to a segment
/// boundary or the chunk's end, matches the tree's entries. The tree must have been checked
/// with [`root`].
pub fn verify_segments(tree: &[u8], chunk_len: u64, first: u64, data: &[u8]) -> bool {
    let start = first * SEGMENT_LEN;
    let end = start + data.len() as u64;
    let whole_segments = end.is_multiple_of(SEGMENT_LEN) || end == chunk_len;
    if data.is_empty() || end > chunk_len || !whole_segments {
        return false;
    }
    data.chunks(SEGMENT_LEN as usize).enumerate().all(|(i, segment)| {
        let index = first + i as u64;
        let entry = index as usize * ENTRY_LEN;
        tree.get(entry..entry + ENTRY_LEN) == Some(&segment_cv(index, segment)[..])
    })
}

fn segment_cv(index: u64, segment: &[u8]) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(index * SEGMENT_LEN).update(segment).finalize_non_root()
}

/// The chaining value of the subtree over `len` bytes whose segments have `cvs`.
fn subtree(cvs: &[ChainingValue], len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    // More than one segment, so `left` is a power of two of at least one segment.
    let left = left_subtree_len(len);
    let split = (left / SEGMENT_LEN) as usize;
    let (l, r) = (subtree(&cvs[..split], left), subtree(&cvs[split..], len - left));
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_tree_hashes_to_the_chunk_id_at_every_shape_of_length() {
        let s = SEGMENT_LEN as usize;
        for len in [0, 1, s - 1, s, s + 1, 2 * s, 3 * s - 5, 5 * s, 7 * s + 1024, 4 << 20] {
            let chunk = content(len);
            let (id, tree) = build(&chunk);
            assert_eq!(id, ChunkId::of(&chunk), "id of {len} bytes");
            assert_eq!(tree.len() as u64, tree_len(len as u64), "tree of {len} bytes");
            if len > s {
                assert_eq!(root(&tree, len as u64), Some(id), "root of {len} bytes");
            }
        }
    }

    #[test]
    fn segments_verify_only_with_their_own_bytes() {
        let s = SEGMENT_LEN as usize;
        let len = 5 * s + 100;
        let mut chunk = content(len);
        let (_, tree) = build(&chunk);
        assert!(verify_segments(&tree, len as u64, 0, &chunk[..s]));
        assert!(verify_segments(&tree, len as u64, 2, &chunk[2 * s..4 * s]));
        assert!(verify_segments(&tree, len as u64, 5, &chunk[5 * s..]), "the short last one");
        // Not segment-aligned at the end, or past the chunk: refused rather than guessed.
        assert!(!verify_segments(&tree, len as u64, 1, &chunk[s..2 * s - 1]));
        assert!(!verify_segments(&tree, len as u64, 6, &chunk[..s]));
        assert!(!verify_segments(&tree, len as u64, 0, &[]));
        // The right bytes at the wrong place, and a flipped bit.
        assert!(!verify_segments(&tree, len as u64, 1, &chunk[..s]));
        chunk[3 * s + 7] ^= 1;
        assert!(!verify_segments(&tree, len as u64, 3, &chunk[3 * s..4 * s]));
    }

    #[test]
    fn a_tree_of_the_wrong_length_or_content_has_no_root_of_the_chunk() {
        let len = 3 * SEGMENT_LEN + 1;
        let (id, mut tree) = build(&content(len as usize));
        assert_eq!(root(&tree[..tree.len() - ENTRY_LEN], len), None);
        assert_eq!(root(&tree, len + SEGMENT_LEN), None);
        tree[40] ^= 1;
        assert_ne!(root(&tree, len), Some(id));
    }
}
