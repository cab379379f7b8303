//! The read path: a file's layout (cached under its read lease), the chunks it names,
//! read-ahead for sequential readers, atime, and SEEK_DATA/SEEK_HOLE.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardfs_meta_api::MetaClient;
use shardfs_meta_api::proto::{Attr, Ino, Layout, Timestamp};

use super::{AtimePolicy, Fs};
use crate::error::{FsError, FsResult};
use crate::leases::{self, Leases};
use crate::seek;

/// Chunks read ahead of a sequential reader at most: one after the first chunk read in a
/// row, one more per further chunk, up to this many.
const MAX_READ_AHEAD_CHUNKS: u64 = 4;

/// Has metad move the atime of `ino` (see [`Fs::atime_update`]); keeps the attributes it
/// answers under the lease.
pub(super) async fn update_atime(
    meta: &MetaClient,
    leases: &Leases,
    ino: Ino,
    strict: bool,
) -> FsResult<()> {
    let epoch = leases.epoch();
    match meta.accessed(ino, strict).await {
        Ok(attr) => {
            leases.update_attr(epoch, &attr);
            Ok(())
        }
        Err(e) => {
            leases.forget_attrs(Some(ino));
            Err(e.into())
        }
    }
}

impl Fs {
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        match self.read_from_layout(fh, offset, size).await {
            // The layout kept may name shards moved since (repair, a drained chunkd): once
            // more, with metad's.
            Err(FsError::ChunkUnreadable { .. }) => {
                let handle = self.handle(fh)?;
                self.leases.drop_layout(handle.file.ino);
                handle.file.data.lock().await.layout = None;
                self.read_from_layout(fh, offset, size).await
            }
            result => result,
        }
    }

    /// [`Fs::read`] through the layout kept for the open file or under its lease, or else
    /// metad's.
    async fn read_from_layout(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handle = self.handle(fh)?;
        let file = &handle.file;
        let mut data = file.data.lock().await;
        // Without a lease (a file with no name left has none) no recall says when another
        // mount changed it: each read asks for the layout again.
        if file.stale.swap(false, Ordering::Relaxed) || !self.leases.holds(file.ino) {
            data.layout = None;
        }
        let kept = match &data.layout {
            Some(layout) => Some(layout.clone()),
            None => self.leases.cached_layout(file.ino),
        };
        let layout = match kept {
            Some(layout) => layout,
            None => {
                let epoch = self.leases.epoch();
                let fetched = self.meta.layout(file.ino);
                let leased = |l: &Layout| {
                    Vec::from_iter((!leases::nameless_read_lease(&l.attr)).then_some(l.attr.ino))
                };
                let layout = Arc::new(self.granting(fetched, leased).await?);
                self.leases.keep_layout(epoch, &layout);
                layout
            }
        };
        data.layout = Some(layout.clone());
        if !data.accessed {
            data.accessed = true;
            // Before the data is returned, so a stat right after the read sees it.
            self.note_read(file.ino, &layout.attr);
        }
        let file_size = layout.attr.size.max(data.end().unwrap_or(0));
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(file_size - offset) as usize;
        let mut buf = vec![0u8; len];
        // A reader starting at the beginning or going on from where it stopped gets whole
        // chunks (and read-ahead); one jumping about gets just the parts it asks for.
        let sequential = match handle.last_read_end.load(Ordering::Relaxed) {
            u64::MAX => offset == 0,
            end => end == offset,
        };
        if data.overlaps(offset, offset + len as u64) {
            self.fill(&layout, offset, &mut buf, sequential).await?;
            data.overlay(offset, &mut buf);
        } else {
            // Without buffered bytes in the way, other readers need not wait for this one.
            drop(data);
            self.fill(&layout, offset, &mut buf, sequential).await?;
        }
        let previous_end = handle.last_read_end.swap(offset + len as u64, Ordering::Relaxed);
        if previous_end == offset {
            let run = handle.sequential.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
            let depth = (run / self.volume.chunk_size + 1).min(MAX_READ_AHEAD_CHUNKS);
            self.read_ahead(&layout, offset + len as u64, depth);
        } else {
            handle.sequential.store(0, Ordering::Relaxed);
        }
        Ok(buf)
    }

    /// Whether a read updates atime: `Some(strict)` to tell metad. With `attr` at hand the
    /// relatime rule is checked here, saving the round trip when nothing changes. Never for
    /// a file flagged `noatime`.
    pub(super) fn atime_update(&self, attr: Option<&Attr>) -> Option<bool> {
        if attr.is_some_and(|a| a.flags.noatime()) {
            return None;
        }
        match self.options.atime {
            AtimePolicy::Never => None,
            AtimePolicy::Always => Some(true),
            AtimePolicy::Relative => {
                attr.is_none_or(|a| a.atime_due(Timestamp::now())).then_some(false)
            }
        }
    }

    /// Copies committed content of file bytes `[offset, offset + buf.len())` into `buf`;
    /// holes stay zero. `whole` reads (and caches) whole chunks: see `ChunkIo::read_into`.
    async fn fill(
        &self,
        layout: &Layout,
        offset: u64,
        buf: &mut [u8],
        whole: bool,
    ) -> FsResult<()> {
        let end = offset + buf.len() as u64;
        let first = layout.extents.partition_point(|e| e.end() <= offset);
        let extents = layout.extents[first..].iter().take_while(|e| e.offset < end);
        // Unwritten extents read as the zeros `buf` starts with.
        for extent in extents.filter(|e| !e.is_unwritten()) {
            let location = layout
                .chunks
                .binary_search_by_key(&extent.chunk, |c| c.chunk)
                .map(|i| &layout.chunks[i])
                .map_err(|_| FsError::MetaProtocol("layout lacks a chunk location".into()))?;
            let from = offset.max(extent.offset);
            let to = end.min(extent.end());
            let in_chunk = (extent.chunk_offset + (from - extent.offset)) as usize;
            let dest = &mut buf[(from - offset) as usize..(to - offset) as usize];
            self.io.read_into(location, in_chunk, dest, whole).await?;
        }
        Ok(())
    }

    /// Warms the cache, in the background, with the `depth` chunks after the one holding
    /// `offset`: those a sequential reader needs next.
    fn read_ahead(&self, layout: &Layout, offset: u64, depth: u64) {
        let window = self.volume.chunk_size;
        for ahead in 1..=depth {
            let next = (offset / window + ahead) * window;
            let index = layout.extents.partition_point(|e| e.end() <= next);
            let Some(extent) = layout.extents.get(index) else {
                return;
            };
            if let Ok(i) = layout.chunks.binary_search_by_key(&extent.chunk, |c| c.chunk) {
                self.io.prefetch(&layout.chunks[i]);
            }
        }
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE.
    pub async fn seek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        // Linux answers a negative offset, like one past the end, with ENXIO.
        let offset = u64::try_from(offset).map_err(|_| FsError::NoSuchOffset)?;
        let handle = self.handle(fh)?;
        let mut data = handle.file.data.lock().await;
        self.flush_locked(&handle.file, &mut data, true).await?;
        let layout = self.meta.layout(handle.file.ino).await?;
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(FsError::Invalid("lseek whence")),
        };
        let found = seek::seek(&layout.extents, layout.attr.size, offset, data)?;
        Ok(found as i64)
    }
}
