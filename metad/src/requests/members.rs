//! chunkd membership: what chunkds tell metad (service `Membership`: registering, their
//! heartbeats, corrupt shards they quarantined), and what tools ask about them and do to
//! them (service `Metad`: listing, draining, forgetting). Changes are the `RegisterChunkd`,
//! `SetDraining`, `ForgetChunkd` and `MarkUnhealthy` mutations.

use std::net::SocketAddr;

use shardfs_chunk_api::membership::{
    MembershipError, MembershipReply, MembershipRequest, MembershipResponse,
};
use tracing::{info, warn};

use super::{Caller, Family, Leasing};
use crate::server::{MetadServer, Outcome};
use crate::store::View;
use shardfs_meta_api::proto::{MemberRequest, MetaError, MetaReply, MetaResponse};

impl Family for MemberRequest {
    /// Tools holding the cluster key ask; no file is touched.
    fn permitted(&self, _: &dyn View) -> Result<(), MetaError> {
        match self {
            MemberRequest::Chunkds | MemberRequest::Drain { .. } | MemberRequest::Forget { .. } => {
                Ok(())
            }
        }
    }

    /// Mounts cache nothing about chunkds that metad must keep coherent.
    fn leasing(&self) -> Leasing<'_> {
        match self {
            MemberRequest::Chunkds | MemberRequest::Drain { .. } | MemberRequest::Forget { .. } => {
                Leasing::Uncovered
            }
        }
    }

    fn answer(self, server: &MetadServer, _: Caller) -> Outcome {
        Outcome::Answered(reply(self, server))
    }
}

fn reply(request: MemberRequest, server: &MetadServer) -> MetaResponse {
    let members = &server.members;
    Ok(match request {
        MemberRequest::Chunkds => MetaReply::Chunkds(members.status()),
        MemberRequest::Drain { chunkd, undo } => {
            if !members.set_draining(&chunkd, !undo)? {
                return Err(MetaError::Invalid(format!("no chunkd {chunkd} is registered")));
            }
            info!(chunkd, draining = !undo, "chunkd drain changed");
            MetaReply::Drained { remaining: server.store.shards_on(&chunkd)? }
        }
        MemberRequest::Forget { chunkd } => {
            members.forget(&chunkd)?;
            info!(chunkd, "chunkd forgotten");
            MetaReply::Done
        }
    })
}

/// Answers a chunkd's membership request.
pub fn membership(
    server: &MetadServer,
    request: MembershipRequest,
    peer: SocketAddr,
) -> MembershipResponse {
    let rejected = |e: MetaError| MembershipError::Rejected(e.to_string());
    let members = &server.members;
    match request {
        MembershipRequest::Register { id, addr, zone, stat } => {
            info!(%id, %addr, ?zone, %peer, "chunkd registered");
            members.register(id, addr, zone, &stat).map_err(rejected)?;
        }
        MembershipRequest::Heartbeat { id, stat } => {
            if !members.heartbeat(&id, &stat) {
                return Err(MembershipError::UnknownChunkd(id));
            }
        }
        MembershipRequest::ReportCorrupt { id, shard } => {
            if !members.is_known(&id) {
                return Err(MembershipError::UnknownChunkd(id));
            }
            warn!(chunkd = %id, %shard, "chunkd quarantined a corrupt shard");
            server.store.mark_shard_unhealthy(shard, &id).map_err(rejected)?;
        }
    }
    Ok(MembershipReply::Ok)
}
