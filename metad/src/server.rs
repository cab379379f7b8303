//! metad's request handler: the client protocol (`Metad`) and chunkd membership.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardfs_chunkd::membership::{
    MembershipError, MembershipReply, MembershipRequest, MembershipResponse,
};
use shardfs_rpc::{Handler, Service};
use tracing::{debug, info, warn};

use crate::access;
use crate::gc::GcStats;
use crate::intents::Intents;
use crate::locks::LockTable;
use crate::members::Members;
use crate::placement;
use crate::proto::{
    ChunkPlan, MetaError, MetaReply, MetaRequest, MetaResponse, ShardPlace, StatFs, WorkerStatus,
};
use crate::repair::RepairStats;
use crate::sessions::Sessions;
use crate::store::{Holder, Store};

pub struct MetadServer {
    pub(crate) store: Arc<Store>,
    pub(crate) members: Arc<Members>,
    locks: LockTable,
    pub(crate) repair: Arc<RepairStats>,
    pub(crate) intents: Arc<Intents>,
    pub(crate) gc: Arc<GcStats>,
    sessions: Sessions,
}

impl MetadServer {
    pub fn new(store: Arc<Store>, members: Members, session_timeout: Duration) -> MetadServer {
        MetadServer {
            store,
            members: Arc::new(members),
            locks: LockTable::default(),
            repair: Arc::default(),
            intents: Arc::default(),
            gc: Arc::default(),
            sessions: Sessions::new(session_timeout),
        }
    }

    /// Releases what a session that ended held: its locks, write intents and open files.
    fn release_session(&self, holder: Holder) {
        self.locks.release_holder(holder);
        self.intents.release_holder(holder);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.release_holder(holder) {
                warn!(holder, "cannot release the files of a departed client: {e}");
            }
        });
    }

    /// Ends the sessions silent for longer than the session timeout.
    pub fn expire_sessions(&self) {
        for (holder, host) in self.sessions.expire() {
            info!(holder, %host, "client session expired; releasing its locks and open files");
            self.release_session(holder);
        }
    }

    fn answer(&self, request: MetaRequest, peer: SocketAddr) -> MetaResponse {
        let store = &self.store;
        access::check(store, &request)?;
        // What the request takes or releases (open files, locks, intents) is its session's;
        // asking also keeps the session alive.
        let holder = self.sessions.of(peer);
        Ok(match request {
            MetaRequest::Volume => MetaReply::Volume(store.volume()),
            MetaRequest::Lookup { parent, name, .. } => {
                MetaReply::Attr(store.lookup(parent, &name)?)
            }
            MetaRequest::GetAttr { ino } => MetaReply::Attr(store.get_attr(ino)?),
            MetaRequest::SetAttr { ino, cred: _, changes } => {
                MetaReply::Attr(store.set_attr(ino, &changes)?)
            }
            MetaRequest::MakeNode { parent, name, mode, rdev, cred } => {
                MetaReply::Attr(store.make_node(parent, &name, mode, rdev, cred)?)
            }
            MetaRequest::MakeDir { parent, name, mode, cred } => {
                MetaReply::Attr(store.make_dir(parent, &name, mode, cred)?)
            }
            MetaRequest::Symlink { parent, name, target, cred } => {
                MetaReply::Attr(store.symlink(parent, &name, &target, cred)?)
            }
            MetaRequest::ReadLink { ino } => MetaReply::Target(store.read_link(ino)?),
            MetaRequest::Unlink { parent, name, .. } => {
                store.unlink(parent, &name)?;
                MetaReply::Done
            }
            MetaRequest::RemoveDir { parent, name, .. } => {
                store.remove_dir(parent, &name)?;
                MetaReply::Done
            }
            MetaRequest::Rename { parent, name, new_parent, new_name, mode, .. } => {
                store.rename(parent, &name, new_parent, &new_name, mode)?;
                MetaReply::Done
            }
            MetaRequest::Link { ino, new_parent, new_name, .. } => {
                MetaReply::Attr(store.link(ino, new_parent, &new_name)?)
            }
            MetaRequest::ReadDir { ino, after, limit, .. } => {
                let (parent, entries) = store.read_dir(ino, after, limit.min(4096))?;
                MetaReply::Entries { parent, entries }
            }
            MetaRequest::GetLayout { ino } => MetaReply::Layout(store.layout(ino)?),
            MetaRequest::OpenFile { ino } => MetaReply::Attr(store.open_file(ino, holder)?),
            MetaRequest::ReleaseFile { ino } => {
                store.release_file(ino, holder)?;
                MetaReply::Done
            }
            MetaRequest::Allocate { ino, offset, len, op } => {
                MetaReply::Attr(store.allocate(ino, offset, len, op)?)
            }
            MetaRequest::CloneRange { src, src_offset, dst, dst_offset, len } => {
                let (attr, len) = store.clone_range(src, src_offset, dst, dst_offset, len)?;
                MetaReply::Cloned { attr, len }
            }
            MetaRequest::TestLock { ino, owner, start, end, kind } => {
                MetaReply::Lock(self.locks.test(ino, holder, owner, start, end, kind))
            }
            MetaRequest::SetLock { ino, owner, lock, wait } => {
                self.locks.set(ino, holder, owner, lock, wait)?;
                MetaReply::Done
            }
            MetaRequest::Fsck { repair } => MetaReply::Fsck(store.fsck(repair)?),
            MetaRequest::ListChunks { after, limit } => {
                MetaReply::Chunks(store.list_chunks(after, limit.min(4096))?)
            }
            MetaRequest::OpenSession { host, resume } => {
                let (id, replaced) = self.sessions.open(peer, host, resume);
                if let Some(implicit) = replaced {
                    self.release_session(implicit);
                }
                let timeout_ms = self.sessions.timeout().as_millis() as u64;
                MetaReply::Session { id, timeout_ms }
            }
            MetaRequest::Heartbeat if self.sessions.is_explicit(holder) => MetaReply::Done,
            MetaRequest::Heartbeat => return Err(MetaError::SessionExpired),
            MetaRequest::Workers => {
                let (repair, gc) = (&self.repair, &self.gc);
                let get = |counter: &std::sync::atomic::AtomicU64| {
                    counter.load(std::sync::atomic::Ordering::Relaxed)
                };
                MetaReply::Workers(WorkerStatus {
                    shards_rebuilt: get(&repair.shards_rebuilt),
                    chunks_failed_repair: get(&repair.chunks_failed),
                    repair_backlog: get(&repair.backlog),
                    chunks_collected: get(&gc.chunks_deleted),
                    orphans_deleted: get(&gc.orphans_deleted),
                    sweeps_aborted: get(&gc.sweeps_aborted),
                })
            }
            MetaRequest::Accessed { ino, strict } => {
                store.accessed(ino, strict)?;
                MetaReply::Done
            }
            MetaRequest::Unlock { ino, owner, start, end } => {
                self.locks.unlock(ino, holder, owner, start, end);
                MetaReply::Done
            }
            MetaRequest::PrepareWrite { chunks, avoid } => {
                // Before the catalogue is read: GC must not take what this write will use.
                self.intents.record(holder, chunks.iter().map(|c| c.chunk));
                let usable: Vec<_> =
                    self.members.usable().into_iter().filter(|c| !avoid.contains(&c.id)).collect();
                let encoding = store.settings().encoding;
                MetaReply::Plans(store.prepare_write(&chunks, |chunk| {
                    let Some(chosen) =
                        placement::place(&chunk.chunk, encoding.total(), &usable, &[])
                    else {
                        let why = format!(
                            "{}+{} encoding needs {} usable chunkds, only {} are up and not full",
                            encoding.k,
                            encoding.m,
                            encoding.total(),
                            usable.len()
                        );
                        warn!("refusing write: {why}");
                        return Err(MetaError::NoSpace(why));
                    };
                    let targets = chosen
                        .iter()
                        .enumerate()
                        .map(|(index, c)| ShardPlace {
                            index: index as u8,
                            chunkd: c.id.clone(),
                            addr: c.addr.clone(),
                        })
                        .collect();
                    Ok(ChunkPlan::Place { encoding, targets })
                })?)
            }
            MetaRequest::CommitWrite { ino, stored, extents, mtime } => {
                let attr = store.commit_write(ino, &stored, &extents, mtime)?;
                // Referenced now: refcounts protect these chunks from here on.
                self.intents.clear(holder, extents.iter().map(|e| e.chunk));
                MetaReply::Attr(attr)
            }
            MetaRequest::SetXattr { ino, name, value, mode, cred } => {
                store.set_xattr(ino, &name, &value, mode, &cred)?;
                MetaReply::Done
            }
            MetaRequest::GetXattr { ino, name, .. } => {
                MetaReply::Xattr(store.get_xattr(ino, &name)?)
            }
            MetaRequest::ListXattr { ino, cred } => {
                let mut names = store.list_xattr(ino)?;
                if cred.uid != 0 {
                    names.retain(|name| !name.starts_with(b"trusted."));
                }
                MetaReply::XattrNames(names)
            }
            MetaRequest::RemoveXattr { ino, name, .. } => {
                store.remove_xattr(ino, &name)?;
                MetaReply::Done
            }
            MetaRequest::StatFs => {
                let mut stat = StatFs { inodes: store.inode_count()?, ..StatFs::default() };
                for chunkd in self.members.status().iter().filter(|c| c.up) {
                    stat.capacity_bytes += chunkd.capacity_bytes;
                    stat.free_bytes += chunkd.free_bytes;
                }
                MetaReply::StatFs(stat)
            }
            MetaRequest::ReportBadShard { shard, chunkd } => {
                if store.mark_shard_unhealthy(shard, &chunkd)? {
                    warn!(%shard, %chunkd, "client reported a bad shard");
                }
                MetaReply::Done
            }
            MetaRequest::Chunkds => MetaReply::Chunkds(self.members.status()),
            MetaRequest::ChunkStatus { chunk } => {
                MetaReply::ChunkStatus(store.chunk_status(chunk)?)
            }
            MetaRequest::CatalogueStats => MetaReply::CatalogueStats(store.catalogue_stats()?),
        })
    }

    fn membership(&self, request: MembershipRequest, peer: SocketAddr) -> MembershipResponse {
        let rejected = |e: MetaError| MembershipError::Rejected(e.to_string());
        match request {
            MembershipRequest::Register { id, addr, zone, stat } => {
                info!(%id, %addr, ?zone, %peer, "chunkd registered");
                self.members.register(id, addr, zone, &stat).map_err(rejected)?;
            }
            MembershipRequest::Heartbeat { id, stat } => {
                if !self.members.heartbeat(&id, &stat) {
                    return Err(MembershipError::UnknownChunkd(id));
                }
            }
            MembershipRequest::ReportCorrupt { id, shard } => {
                if !self.members.is_known(&id) {
                    return Err(MembershipError::UnknownChunkd(id));
                }
                warn!(chunkd = %id, %shard, "chunkd quarantined a corrupt shard");
                self.store.mark_shard_unhealthy(shard, &id).map_err(rejected)?;
            }
        }
        Ok(MembershipReply::Ok)
    }
}

impl Handler for MetadServer {
    fn offers(&self, service: Service) -> bool {
        matches!(service, Service::Metad | Service::Membership)
    }

    async fn handle(
        self: Arc<Self>,
        service: Service,
        peer: SocketAddr,
        body: Bytes,
    ) -> Result<Vec<u8>, shardfs_rpc::Error> {
        // SQLite calls block; keep them off the async workers.
        let run = move || match service {
            Service::Membership => {
                let request: MembershipRequest = shardfs_rpc::decode(&body)?;
                Ok(shardfs_rpc::encode(&self.membership(request, peer)))
            }
            _ => {
                let request: MetaRequest = shardfs_rpc::decode(&body)?;
                debug!(?request, "request");
                Ok(shardfs_rpc::encode(&self.answer(request, peer)))
            }
        };
        tokio::task::spawn_blocking(run).await.map_err(|e| {
            shardfs_rpc::Error::Io(std::io::Error::other(format!("request handler failed: {e}")))
        })?
    }

    fn disconnected(&self, service: Service, peer: SocketAddr) {
        if service != Service::Metad {
            return;
        }
        if let Some(holder) = self.sessions.disconnected(peer) {
            self.release_session(holder);
        }
    }
}
