//! The chunk catalogue: where each chunk's shards are, their health, and collecting the
//! chunks nothing references. Readers' reports mark a shard unhealthy (`MarkUnhealthy`).

use serde::{Deserialize, Serialize};
use shardfs_chunkd::{ChunkId, ShardId};
use tracing::warn;

use super::{Caller, Family, Leasing};
use crate::proto::{MetaError, MetaReply, MetaResponse};
use crate::server::{MetadServer, Outcome};
use crate::store::Store;

#[derive(Clone, Debug, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum CatalogueRequest {
    ChunkStatus {
        chunk: ChunkId,
    },
    CatalogueStats,
    /// Catalogued chunks after `after`, in id order, at most `limit` (without inline
    /// content).
    ListChunks {
        after: Option<ChunkId>,
        limit: u32,
    },
    /// A reader found a shard missing or corrupt.
    ReportBadShard {
        shard: ShardId,
        chunkd: String,
    },
    /// Starts a garbage-collection pass now; answers `Collecting`.
    Collect,
}

impl Family for CatalogueRequest {
    /// Whoever holds the cluster key may ask: the catalogue names chunks, not files, and a
    /// report of a bad shard is checked against where the catalogue places it.
    fn permitted(&self, _: &Store) -> Result<(), MetaError> {
        match self {
            CatalogueRequest::ChunkStatus { .. }
            | CatalogueRequest::CatalogueStats
            | CatalogueRequest::ListChunks { .. }
            | CatalogueRequest::ReportBadShard { .. }
            | CatalogueRequest::Collect => Ok(()),
        }
    }

    /// Mounts cache no catalogue.
    fn leasing(&self) -> Leasing<'_> {
        match self {
            CatalogueRequest::ChunkStatus { .. }
            | CatalogueRequest::CatalogueStats
            | CatalogueRequest::ListChunks { .. }
            | CatalogueRequest::ReportBadShard { .. }
            | CatalogueRequest::Collect => Leasing::Uncovered,
        }
    }

    fn answer(self, server: &MetadServer, _: Caller) -> Outcome {
        Outcome::Answered(self.reply(server))
    }
}

impl CatalogueRequest {
    fn reply(self, server: &MetadServer) -> MetaResponse {
        let store = &server.store;
        Ok(match self {
            CatalogueRequest::ChunkStatus { chunk } => {
                MetaReply::ChunkStatus(store.chunk_status(chunk)?)
            }
            CatalogueRequest::CatalogueStats => {
                let down = server.members.lost(std::time::Duration::ZERO);
                MetaReply::CatalogueStats(store.catalogue_stats(&down)?)
            }
            CatalogueRequest::ListChunks { after, limit } => {
                MetaReply::Chunks(store.list_chunks(after, limit.min(4096))?)
            }
            CatalogueRequest::ReportBadShard { shard, chunkd } => {
                if store.mark_shard_unhealthy(shard, &chunkd)? {
                    warn!(%shard, %chunkd, "client reported a bad shard");
                }
                MetaReply::Done
            }
            CatalogueRequest::Collect => {
                MetaReply::Collecting { done_after: server.gc.passes.request() }
            }
        })
    }
}
