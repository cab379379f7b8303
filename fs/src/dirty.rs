//! Buffered writes of one file that are not yet committed to metad.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Non-overlapping, non-adjacent byte ranges written since the last flush, keyed by file
/// offset.
#[derive(Debug, Default)]
pub struct DirtyRanges {
    ranges: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

/// A range ready to become one chunk: it never crosses a multiple of the chunk size. Its
/// bytes are shared, not copied, by the puts that store it and the cache that keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub data: Arc<Vec<u8>>,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

impl DirtyRanges {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// End of the last buffered byte.
    pub fn end(&self) -> Option<u64> {
        self.ranges.iter().next_back().map(|(start, data)| start + data.len() as u64)
    }

    /// Buffers `data` at `offset`, replacing what it overlaps and merging with neighbours.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Every range that overlaps or touches [offset, end].
        let touching: Vec<u64> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(start, range)| *start + range.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let mut start = offset;
        let mut merged: Vec<u8> = Vec::new();
        // The lowest touching range starting at or before `offset` is extended in place, so
        // sequential appends do not copy what is already buffered.
        if let Some(&first) = touching.last()
            && first <= offset
        {
            merged = self.ranges.remove(&first).expect("listed above");
            self.bytes -= merged.len();
            start = first;
        }
        for other in &touching {
            if let Some(range) = self.ranges.remove(other) {
                self.bytes -= range.len();
                let at = (other - start) as usize;
                if merged.len() < at + range.len() {
                    merged.resize(at + range.len(), 0);
                }
                merged[at..at + range.len()].copy_from_slice(&range);
            }
        }
        let at = (offset - start) as usize;
        if merged.len() < at + data.len() {
            merged.resize(at + data.len(), 0);
        }
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.ranges.insert(start, merged);
    }

    /// Whether any buffered byte lies in `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.ranges.range(..end).next_back().is_some_and(|(s, data)| s + data.len() as u64 > start)
    }

    /// Copies buffered bytes over `buf`, which holds file bytes `[offset, offset + len)`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (start, data) in self.ranges.range(..end) {
            let range_end = start + data.len() as u64;
            if range_end <= offset {
                continue;
            }
            let from = offset.max(*start);
            let to = end.min(range_end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
        }
    }

    /// Drops buffered bytes at or past `size`.
    pub fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.ranges.range(size..).map(|(s, _)| *s).collect();
        for start in beyond {
            let range = self.ranges.remove(&start).expect("listed above");
            self.bytes -= range.len();
        }
        if let Some((start, range)) = self.ranges.range_mut(..size).next_back() {
            let keep = (size - start) as usize;
            if range.len() > keep {
                self.bytes -= range.len() - keep;
                range.truncate(keep);
            }
        }
    }

    /// Takes everything buffered, cut into pieces at multiples of `window`.
    pub fn take_all(&mut self, window: u64) -> Vec<Piece> {
        self.bytes = 0;
        std::mem::take(&mut self.ranges)
            .into_iter()
            .flat_map(|(start, data)| cut(start, data, window))
            .collect()
    }

    /// Takes the whole windows buffered: each range's unfinished windows stay, the last
    /// (which later sequential writes are likely to complete) and the first when the range
    /// starts inside it (a write before it, arriving late, completes it). A window is thus
    /// one chunk however the writes to it arrived, and identical content is cut the same.
    /// Cut like [`take_all`](Self::take_all).
    pub fn take_completed(&mut self, window: u64) -> Vec<Piece> {
        let mut taken = Vec::new();
        for (start, data) in std::mem::take(&mut self.ranges) {
            let end = start + data.len() as u64;
            let (first, last) = (start.div_ceil(window) * window, end / window * window);
            if last <= first {
                self.ranges.insert(start, data);
                continue;
            }
            let (head, rest) = data.split_at((first - start) as usize);
            let (whole, tail) = rest.split_at((last - first) as usize);
            self.bytes -= whole.len();
            taken.extend(cut_slice(first, whole, window));
            if !head.is_empty() {
                self.ranges.insert(start, head.to_vec());
            }
            if !tail.is_empty() {
                self.ranges.insert(last, tail.to_vec());
            }
        }
        taken
    }

    /// Puts back pieces whose commit failed, under whatever was written since: only the
    /// bytes no buffered range covers are taken from them.
    pub fn restore(&mut self, pieces: Vec<Piece>) {
        for piece in pieces {
            let covered: Vec<(u64, u64)> = self
                .ranges
                .range(..piece.end())
                .map(|(start, data)| (*start, *start + data.len() as u64))
                .filter(|&(_, end)| end > piece.offset)
                .collect();
            let mut at = piece.offset;
            let mut gaps = Vec::new();
            for (start, end) in covered.into_iter().chain([(piece.end(), piece.end())]) {
                if at < start {
                    gaps.push((at, start));
                }
                at = at.max(end);
            }
            for (from, to) in gaps {
                let bytes =
                    &piece.data[(from - piece.offset) as usize..(to - piece.offset) as usize];
                self.write(from, bytes);
            }
        }
    }
}

/// Cuts `[start, start + data.len())` at multiples of `window`; a range within one window
/// becomes its piece without a copy.
fn cut(start: u64, data: Vec<u8>, window: u64) -> Vec<Piece> {
    let end = start + data.len() as u64;
    if !data.is_empty() && (start / window + 1) * window >= end {
        return vec![Piece { offset: start, data: Arc::new(data) }];
    }
    cut_slice(start, &data, window)
}

/// [`cut`], copying each byte once.
fn cut_slice(start: u64, data: &[u8], window: u64) -> Vec<Piece> {
    let end = start + data.len() as u64;
    let mut pieces = Vec::new();
    let mut offset = start;
    while offset < end {
        let next = ((offset / window + 1) * window).min(end);
        let bytes = data[(offset - start) as usize..(next - start) as usize].to_vec();
        pieces.push(Piece { offset, data: Arc::new(bytes) });
        offset = next;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain byte array as the reference model.
    fn check(dirty: &DirtyRanges, model: &[Option<u8>]) {
        let mut buf = vec![0xEEu8; model.len()];
        dirty.overlay(0, &mut buf);
        for (i, expected) in model.iter().enumerate() {
            if let Some(b) = expected {
                assert_eq!(buf[i], *b, "byte {i}");
            } else {
                assert_eq!(buf[i], 0xEE, "byte {i} should not be dirty");
            }
        }
        assert_eq!(dirty.bytes(), model.iter().filter(|b| b.is_some()).count());
        let mut prev_end = None;
        for (start, data) in &dirty.ranges {
            assert!(!data.is_empty());
            if let Some(end) = prev_end {
                assert!(*start > end, "ranges must not touch");
            }
            prev_end = Some(start + data.len() as u64);
        }
    }

    #[test]
    fn writes_merge_like_a_byte_array() {
        let mut dirty = DirtyRanges::default();
        let mut model = vec![None; 200];
        let writes: &[(u64, usize, u8)] = &[
            (10, 5, 1),
            (20, 5, 2),
            (15, 5, 3),
            (0, 3, 4),
            (2, 30, 5),
            (100, 10, 6),
            (95, 20, 7),
            (40, 1, 8),
            (41, 1, 9),
            (39, 1, 10),
            (150, 10, 11),
            (155, 2, 12),
        ];
        for &(offset, len, value) in writes {
            dirty.write(offset, &vec![value; len]);
            for b in &mut model[offset as usize..offset as usize + len] {
                *b = Some(value);
            }
            check(&dirty, &model);
        }
        dirty.truncate(100);
        for b in &mut model[100..] {
            *b = None;
        }
        check(&dirty, &model);
        assert_eq!(dirty.end(), Some(100));
    }

    #[test]
    fn pieces_never_cross_windows() {
        let mut dirty = DirtyRanges::default();
        dirty.write(5, &[1; 20]);
        dirty.write(40, &[2; 3]);
        let pieces = dirty.take_all(8);
        let spans: Vec<_> = pieces.iter().map(|p| (p.offset, p.data.len())).collect();
        assert_eq!(spans, [(5, 3), (8, 8), (16, 8), (24, 1), (40, 3)]);
        assert!(dirty.is_empty());
        assert_eq!(dirty.bytes(), 0);
    }

    #[test]
    fn take_completed_keeps_unfinished_windows() {
        let mut dirty = DirtyRanges::default();
        dirty.write(0, &[1; 20]);
        dirty.write(30, &[2; 4]);
        // Written after a hole, as a write arriving out of order leaves one.
        dirty.write(44, &[3; 20]);
        let pieces = dirty.take_completed(8);
        let spans: Vec<_> = pieces.iter().map(|p| (p.offset, p.data.len())).collect();
        // [16, 20) and [32, 34) start windows that later writes may still fill; [30, 32)
        // and [44, 48) end windows whose start is missing: all stay, so that each window
        // becomes one chunk once it is whole.
        assert_eq!(spans, [(0, 8), (8, 8), (48, 8), (56, 8)]);
        assert_eq!(dirty.bytes(), 12);
        let mut buf = [0u8; 64];
        dirty.overlay(0, &mut buf);
        assert_eq!(&buf[16..20], &[1; 4]);
        assert_eq!(&buf[30..34], &[2; 4]);
        assert_eq!(&buf[40..48], &[0, 0, 0, 0, 3, 3, 3, 3]);
        // The late write fills the hole: the window goes whole.
        dirty.write(40, &[4; 4]);
        let spans: Vec<_> =
            dirty.take_completed(8).iter().map(|p| (p.offset, p.data.len())).collect();
        assert_eq!(spans, [(40, 8)]);
        dirty.restore(pieces);
        assert_eq!(dirty.bytes(), 40);
    }

    #[test]
    fn restored_pieces_go_under_newer_writes() {
        let mut dirty = DirtyRanges::default();
        dirty.write(0, &[1; 24]);
        let pieces = dirty.take_all(8);
        // Written while the pieces were being stored: they must win.
        dirty.write(4, &[2; 2]);
        dirty.write(10, &[3; 8]);
        dirty.write(30, &[4; 2]);
        dirty.restore(pieces);
        let mut model = vec![Some(1u8); 24];
        model.extend([None; 6]);
        model.extend([Some(4); 2]);
        model[4..6].fill(Some(2));
        model[10..18].fill(Some(3));
        check(&dirty, &model);
    }
}
