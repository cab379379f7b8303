//! The chunk catalogue: where each chunk's shards are, their health, and collecting the
//! chunks nothing references. Readers' reports mark a shard unhealthy (`MarkUnhealthy`).

use tracing::warn;

use super::{Caller, Family, Leasing};
use crate::server::{MetadServer, Outcome};
use crate::store::View;
use shardfs_meta_api::proto::{CatalogueRequest, MetaError, MetaReply, MetaResponse};

impl Family for CatalogueRequest {
    /// Whoever holds the cluster key may ask: the catalogue names chunks, not files, and a
    /// report of a bad shard is checked against where the catalogue places it.
    fn permitted(&self, _: &dyn View) -> Result<(), MetaError> {
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
        Outcome::Answered(reply(self, server))
    }
}

fn reply(request: CatalogueRequest, server: &MetadServer) -> MetaResponse {
    let store = &server.store;
    Ok(match request {
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
