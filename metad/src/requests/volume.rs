//! The volume as a whole: its settings, its size, making changes durable, checking the
//! metadata's invariants, and the background workers' counters. Only a repairing fsck
//! changes the database (the `Repair` mutation).

use super::{Caller, Family, Leasing};
use crate::server::{MetadServer, Outcome};
use crate::store::View;
use shardfs_meta_api::proto::{MetaError, MetaReply, MetaResponse, StatFs, VolumeRequest};

impl Family for VolumeRequest {
    /// Anyone may ask: `statfs` and `fsync` are every user's, and fsck repairs only what
    /// breaks the invariants.
    fn permitted(&self, _: &dyn View) -> Result<(), MetaError> {
        match self {
            VolumeRequest::Volume
            | VolumeRequest::StatFs
            | VolumeRequest::Sync
            | VolumeRequest::Fsck { .. }
            | VolumeRequest::Workers => Ok(()),
        }
    }

    /// None recalls leases: a repairing fsck fixes inodes under mounts' leases, and they may
    /// show the old values until their leases end (it is run by an administrator, rarely).
    fn leasing(&self) -> Leasing<'_> {
        match self {
            VolumeRequest::Volume
            | VolumeRequest::StatFs
            | VolumeRequest::Sync
            | VolumeRequest::Fsck { .. }
            | VolumeRequest::Workers => Leasing::Uncovered,
        }
    }

    fn answer(self, server: &MetadServer, _: Caller) -> Outcome {
        Outcome::Answered(reply(self, server))
    }
}

fn reply(request: VolumeRequest, server: &MetadServer) -> MetaResponse {
    let store = &server.store;
    Ok(match request {
        VolumeRequest::Volume => MetaReply::Volume(store.volume()),
        VolumeRequest::StatFs => {
            let mut stat = StatFs { inodes: store.inode_count()?, ..StatFs::default() };
            // Each filesystem once: chunkds sharing a host's disk share its space.
            let mut counted = std::collections::HashSet::new();
            for chunkd in server.members.status().iter().filter(|c| c.up) {
                let host = chunkd.addr.rsplit_once(':').map_or(&*chunkd.addr, |(h, _)| h);
                if counted.insert((host.to_owned(), chunkd.filesystem)) {
                    stat.capacity_bytes += chunkd.capacity_bytes;
                    stat.free_bytes += chunkd.free_bytes;
                }
            }
            MetaReply::StatFs(stat)
        }
        VolumeRequest::Sync => {
            store.sync()?;
            MetaReply::Done
        }
        VolumeRequest::Fsck { repair } => MetaReply::Fsck(store.fsck(repair)?),
        VolumeRequest::Workers => MetaReply::Workers(server.worker_status()),
    })
}
