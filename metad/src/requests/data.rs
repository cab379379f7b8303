//! File data: layouts, placing and committing writes, fallocate and clone ranges, and the
//! content of inline chunks. Changes are the `CommitWrite`, `Allocate` and `CloneRange`
//! mutations; placement is decided before (`PrepareWrite`), outside any mutation.
//!
//! Who may write a file is the kernel's to decide when it opens it (see `access.rs`); what
//! its immutable and append-only flags refuse is checked here (`flags.rs`).

use shardfs_chunk_api::Encoding;
use tracing::warn;

use super::{Caller, Family, Grant, Leasing, Target, flags, valid_times};
use crate::leases::Need::{Read, Write};
use crate::placement;
use crate::server::{MetadServer, Outcome};
use crate::store::View;
use shardfs_meta_api::proto::{
    ChunkPlan, ChunkToWrite, DataRequest, Ino, MetaError, MetaReply, MetaResponse, SetTime,
};
use shardfs_rpc::throttle::Throttle;

impl Family for DataRequest {
    fn permitted(&self, view: &dyn View) -> Result<(), MetaError> {
        match self {
            DataRequest::CommitWrite { ino, extents, mtime, .. } => {
                valid_times(&[Some(SetTime::At(*mtime))])?;
                flags::may_write(view, *ino, extents.iter().map(|e| e.offset))
            }
            DataRequest::Allocate { ino, op, .. } => flags::may_allocate(view, *ino, op),
            DataRequest::CloneRange { dst, dst_offset, .. } => {
                flags::may_write(view, *dst, std::iter::once(*dst_offset))
            }
            DataRequest::GetLayout { .. }
            | DataRequest::PrepareWrite { .. }
            | DataRequest::ReadInline { .. } => Ok(()),
        }
    }

    fn leasing(&self) -> Leasing<'_> {
        use Target::Inode;
        let (needs, grant) = match self {
            DataRequest::GetLayout { ino } => (vec![(Inode(*ino), Read)], Grant::Read),
            DataRequest::CommitWrite { ino, .. } | DataRequest::Allocate { ino, .. } => {
                (vec![(Inode(*ino), Write)], Grant::Nothing)
            }
            DataRequest::CloneRange { src, dst, .. } => {
                (vec![(Inode(*src), Read), (Inode(*dst), Write)], Grant::Nothing)
            }
            // Chunks, not files: a chunk's content never changes.
            DataRequest::PrepareWrite { .. } | DataRequest::ReadInline { .. } => {
                return Leasing::Uncovered;
            }
        };
        Leasing::Covered { needs, grant }
    }

    fn answer(self, server: &MetadServer, caller: Caller) -> Outcome {
        Outcome::Answered(reply(self, server, caller))
    }
}

fn reply(request: DataRequest, server: &MetadServer, caller: Caller) -> MetaResponse {
    let store = &server.store;
    Ok(match request {
        DataRequest::GetLayout { ino } => MetaReply::Layout(store.layout(ino)?),
        DataRequest::PrepareWrite { ino, chunks, avoid } => {
            MetaReply::Plans(prepare_write(server, caller, ino, &chunks, &avoid)?)
        }
        DataRequest::CommitWrite { ino, stored, inline, extents, mtime } => {
            let attr = store.commit_write(ino, &stored, &inline, &extents, mtime)?;
            // Referenced now: refcounts protect these chunks from here on.
            server.intents.clear(caller.holder, extents.iter().map(|e| e.chunk));
            MetaReply::Attr(attr)
        }
        DataRequest::Allocate { ino, offset, len, op } => {
            MetaReply::Attr(store.allocate(ino, offset, len, op)?)
        }
        DataRequest::CloneRange { src, src_offset, dst, dst_offset, len } => {
            let (attr, len) = store.clone_range(src, src_offset, dst, dst_offset, len)?;
            MetaReply::Cloned { attr, len }
        }
        DataRequest::ReadInline { chunk } => MetaReply::Data(store.read_inline(chunk)?),
    })
}

/// How often the same refusal or degraded-write warning may be logged.
const REPEATED_LOG: std::time::Duration = std::time::Duration::from_secs(10);
static REFUSED_LOG: Throttle = Throttle::new(REPEATED_LOG);
static DEGRADED_LOG: Throttle = Throttle::new(REPEATED_LOG);

/// Where each chunk goes: nowhere if it is stored already (dedup), else on chunkds chosen
/// now. Recorded as the caller's intents first, so GC takes nothing the write will use.
fn prepare_write(
    server: &MetadServer,
    caller: Caller,
    ino: Ino,
    chunks: &[ChunkToWrite],
    avoid: &[String],
) -> Result<Vec<ChunkPlan>, MetaError> {
    let encoding = server.store.write_class(ino)?;
    let limit = server.sessions.limits().prepared_chunks;
    server.intents.record(caller.holder, chunks.iter().map(|c| c.chunk), limit)?;
    let members = &server.members;
    let usable: Vec<_> = members.usable().into_iter().filter(|c| !avoid.contains(&c.id)).collect();
    let full = members.full();
    let min_shards = min_shards(server.min_shards, encoding);
    server.store.prepare_write(chunks, |chunk| {
        match placement::place_new(&chunk.chunk, encoding, min_shards, &usable, full) {
            Ok(targets) => {
                if targets.len() < encoding.total()
                    && let Some(held_back) = DEGRADED_LOG.admit()
                {
                    warn!(
                        held_back,
                        "writing degraded: {} of {} shards per chunk placed ({} usable \
                         chunkds); repair adds the rest",
                        targets.len(),
                        encoding.total(),
                        usable.len()
                    );
                }
                Ok(ChunkPlan::Place { encoding, targets })
            }
            Err(e) => {
                if let Some(held_back) = REFUSED_LOG.admit() {
                    warn!(held_back, "refusing write: {e}");
                }
                Err(e)
            }
        }
    })
}

/// Shards a new chunk of `encoding` needs placed to be written: `--min-shards` (kept
/// within k..=k+m, k being 1 for replicas), else k+1, so a chunk written degraded still
/// survives the loss of one more chunkd.
fn min_shards(configured: Option<u8>, encoding: Encoding) -> usize {
    let (k, total) = (encoding.needed(), encoding.total());
    configured.map_or(k + 1, usize::from).clamp(k, total)
}
