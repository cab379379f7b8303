//! metad's request handler: the client protocol (`Metad`) and chunkd membership.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use shardfs_chunkd::membership::{
    MembershipError, MembershipReply, MembershipRequest, MembershipResponse,
};
use shardfs_rpc::{ClusterKey, DaemonAuth, Handler, Service};
use tracing::{debug, info, warn};

use crate::access;
use shardfs_rpc::metrics::{OpMetrics, Registry, Snapshot, Value};

use crate::fair::FairGate;
use crate::gc::GcStats;
use crate::intents::Intents;
use crate::leases::{Conflict, Leases, Need};
use crate::locks::LockTable;
use crate::members::Members;
use crate::placement;
use crate::proto::{
    Attr, ChunkPlan, FileKind, Ino, Made, MetaError, MetaReply, MetaRequest, MetaResponse, StatFs,
    WorkerStatus, names_an_entry,
};
use crate::repair::RepairStats;
use crate::sessions::{Departed, SessionLimits, Sessions};
use crate::store::{Holder, Holdings, Store};
use shardfs_chunkd::Encoding;
use shardfs_rpc::throttle::Throttle;

pub struct MetadServer {
    pub(crate) store: Arc<Store>,
    pub(crate) members: Arc<Members>,
    locks: LockTable,
    pub(crate) repair: Arc<RepairStats>,
    pub(crate) intents: Arc<Intents>,
    pub(crate) gc: Arc<GcStats>,
    sessions: Sessions,
    leases: Leases,
    mount_requests: std::sync::atomic::AtomicU64,
    /// Whether leases on lingering files are being recalled (`reclaim_lingered`).
    recalling_lingered: AtomicBool,
    /// Authenticates every connection, in and out.
    pub(crate) auth: DaemonAuth,
    /// Turns at the database for clients' requests, shared fairly between connections.
    gate: FairGate,
    /// Counts and latencies of requests, and the registry they are served from.
    metrics: Metrics,
    /// The data directory's lock, held while this server lives (`crate::backup`).
    _data_lock: Option<std::fs::File>,
    /// Shards a new chunk needs placed for a write to go on (`--min-shards`); `None`: k+1.
    min_shards: Option<u8>,
}

/// How often the same refusal or degraded-write warning may be logged.
const REPEATED_LOG: std::time::Duration = std::time::Duration::from_secs(10);
static REFUSED_LOG: Throttle = Throttle::new(REPEATED_LOG);
static DEGRADED_LOG: Throttle = Throttle::new(REPEATED_LOG);

/// metad's metrics registry: request counts and latencies, and a snapshot of its state.
struct Metrics {
    registry: Registry,
    requests: OpMetrics,
    snapshot: Arc<Snapshot>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests =
            OpMetrics::register(&mut registry, "shardfs_metad_requests", "Requests from clients");
        let snapshot = Snapshot::register(&mut registry);
        Metrics { registry, requests, snapshot }
    }
}

/// What answering a request came to: an answer, or leases of other sessions to recall
/// before it can be answered (the request comes back, to be tried again).
enum Outcome {
    Answered(MetaResponse),
    Recall(MetaRequest, Vec<Conflict>),
    /// A write lease waits while another request recalls leases on its file.
    WaitRecalls(MetaRequest, Ino),
    /// F_SETLKW waits for locks to be let go after the lock table's version given.
    WaitLock(MetaRequest, u64),
}

impl MetadServer {
    /// A server for `store`, taking up what its sessions held before (`holdings`).
    pub fn new(
        store: Arc<Store>,
        members: Members,
        (limits, holdings): (SessionLimits, Holdings),
        auth: DaemonAuth,
    ) -> MetadServer {
        let sessions = Sessions::new(limits);
        sessions.restore(holdings.sessions);
        MetadServer {
            auth,
            locks: LockTable::recorded(store.clone(), holdings.locks),
            store,
            members: Arc::new(members),
            repair: Arc::default(),
            intents: Arc::default(),
            gc: Arc::default(),
            sessions,
            leases: Leases::default(),
            mount_requests: Default::default(),
            recalling_lingered: AtomicBool::new(false),
            gate: FairGate::new(crate::fair::default_slots()),
            _data_lock: None,
            metrics: Metrics::new(),
            min_shards: None,
        }
    }

    /// This server, writing chunks degraded down to `min_shards` placed shards.
    pub fn with_min_shards(self, min_shards: Option<u8>) -> MetadServer {
        MetadServer { min_shards, ..self }
    }

    /// Shards a new chunk of `encoding` needs placed to be written: `--min-shards` (kept
    /// within k..=k+m), else k+1, so a chunk written degraded still survives the loss of
    /// one more chunkd.
    fn min_shards(&self, encoding: Encoding) -> usize {
        let (k, total) = (encoding.k as usize, encoding.total());
        self.min_shards.map_or(k + 1, usize::from).clamp(k, total)
    }

    /// This server, holding `lock` (its data directory's) for as long as it lives.
    pub fn holding(self, lock: std::fs::File) -> MetadServer {
        MetadServer { _data_lock: Some(lock), ..self }
    }

    /// The key connections to this metad are authenticated with.
    pub fn key(&self) -> ClusterKey {
        self.auth.key
    }

    /// Releases what a session that ended held: its locks, write intents and open files.
    fn release_session(&self, holder: Holder) {
        self.leases.release_holder(holder);
        self.locks.release_holder(holder);
        self.intents.release_holder(holder);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.release_holder(holder) {
                warn!(holder, "cannot release the files of a departed client: {e}");
            }
        });
    }

    /// Deletes the files that lost their last name and lingered long enough, except those a
    /// session holds a lease on: a mount may have opened one under its lease without telling
    /// metad. Their leases are recalled (settling a recall registers such opens), and they
    /// are looked at again after lingering once more.
    pub fn reclaim_lingered(self: &Arc<Self>) -> Result<(), MetaError> {
        let table = self.leases.lock();
        let leased = (self.store)
            .reclaim_lingered(std::time::Instant::now(), |ino| !table.holders_of(ino).is_empty())?;
        let conflicts: Vec<Conflict> =
            leased.into_iter().flat_map(|ino| table.holders_of(ino)).collect();
        drop(table);
        // One batch of recalls at a time: the files wait for it, lingering.
        if conflicts.is_empty() || self.recalling_lingered.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let server = self.clone();
        tokio::spawn(async move {
            let expiry = server.sessions.timeout();
            server.leases.recall(&conflicts, expiry, |h| server.sessions.peer_of(h)).await;
            server.recalling_lingered.store(false, Ordering::SeqCst);
        });
        Ok(())
    }

    /// Drops the leases on inodes deleted since last time.
    pub fn forget_deleted(&self) {
        for ino in self.store.take_deleted() {
            self.leases.forget_inode(ino);
        }
    }

    /// Ends the sessions silent for longer than the session timeout.
    pub fn expire_sessions(&self) {
        for (holder, host) in self.sessions.expire() {
            info!(holder, %host, "client session expired; releasing its locks and open files");
            self.release_session(holder);
        }
    }

    /// Answers `request` from `holder`, unless leases of other sessions must be recalled
    /// first. Requests that read or change what leases cover check for conflicting leases,
    /// run, and grant the asking mount read leases on what they answered, all under the
    /// lease table's lock, so no grant lands between a recall and the change it made way for.
    fn answer_leased(&self, request: MetaRequest, holder: Holder, peer: SocketAddr) -> Outcome {
        if let Some(why) = request.malformed() {
            return Outcome::Answered(Err(MetaError::Invalid(why.into())));
        }
        if let Err(e) = access::check(&self.store, &request) {
            return Outcome::Answered(Err(e));
        }
        if let MetaRequest::SetLock { ino, owner, lock, wait: true } = request {
            let version = self.locks.version();
            return match self.locks.set(ino, holder, owner, lock) {
                Err(MetaError::WouldBlock) => Outcome::WaitLock(request, version),
                result => Outcome::Answered(result.map(|()| MetaReply::Done)),
            };
        }
        if !self.leases_cover(&request) {
            return Outcome::Answered(self.answer(request, holder, peer));
        }
        let leasing = self.sessions.is_explicit(holder);
        let write = matches!(request, MetaRequest::WriteLease { .. });
        if write && !leasing {
            // Only mounts cache, so only their sessions take write leases.
            let why = "only a mount's session can take a write lease";
            return Outcome::Answered(Err(MetaError::Invalid(why.into())));
        }
        let mut table = self.leases.lock();
        if let MetaRequest::WriteLease { ino } = request
            && table.is_recalling(ino)
        {
            return Outcome::WaitRecalls(request, ino);
        }
        let before = self.lease_needs(&request);
        let mut conflicts = Vec::new();
        for (ino, need) in before {
            table.conflicts(holder, ino, need, &mut conflicts);
        }
        if !conflicts.is_empty() {
            return Outcome::Recall(request, conflicts);
        }
        let grants = grants_leases(&request);
        let creates = matches!(request, MetaRequest::MakeNode { .. });
        // Lookups and listings find the inodes they read only as they run.
        let retry = match &request {
            MetaRequest::Lookup { .. } | MetaRequest::ReadDir { .. } => Some(request.clone()),
            _ => None,
        };
        // A lookup's answer covers its directory's entry; a listing's, the directory.
        let dir = match &request {
            MetaRequest::Lookup { parent: dir, name, .. } if names_an_entry(name) => Some(*dir),
            MetaRequest::ReadDir { ino: dir, .. } => Some(*dir),
            _ => None,
        };
        let reply = match self.answer(request, holder, peer) {
            Ok(reply) => reply,
            Err(e) => return Outcome::Answered(Err(e)),
        };
        // The mount that took a file's last name drops its own lease on the file (see
        // `name_removed` in the client): so does metad, or the file would linger on it.
        let nameless = match &reply {
            MetaReply::Unlinked(u) if u.target.as_ref().is_none_or(|a| a.nlink == 0) => Some(u.ino),
            MetaReply::Renamed { replaced } => *replaced,
            _ => None,
        };
        if let Some(ino) = nameless {
            table.remove(holder, ino);
            self.leases.wake();
        }
        let mut granted: Vec<Ino> = dir.into_iter().collect();
        // A file with no name left gets no read lease: under a lease a mount opens a file
        // without telling metad, and a mount that keeps looking at a deleted file (by
        // handle, say) would keep it from ever going (see `reclaim_lingered`). The client
        // takes none either; a write lease is asked for, by a writer that has it open.
        let leasable = |attr: &Attr| (attr.nlink > 0 || write).then_some(attr.ino);
        // A new name's answer tells about its directory too, on which the asking mount needs
        // no new lease: it already has its read lease, or none to keep the attributes under.
        match &reply {
            MetaReply::Attr(attr) | MetaReply::Made(Made { attr, .. }) => {
                granted.extend(leasable(attr))
            }
            MetaReply::Layout(layout) => granted.extend(leasable(&layout.attr)),
            MetaReply::Entries { entries, .. } => {
                granted.extend(entries.iter().map(|e| e.attr.ino))
            }
            _ => {}
        }
        if let Some(retry) = retry {
            // What was read must not sit in another mount's write buffers.
            for &ino in &granted {
                table.conflicts(holder, ino, Need::Read, &mut conflicts);
            }
            if !conflicts.is_empty() {
                return Outcome::Recall(retry, conflicts);
            }
        }
        // The creator of a regular file gets its write lease with it: nobody else knows the
        // file yet, and the creator is about to write it.
        let write = write
            || (creates && matches!(&reply, MetaReply::Made(m) if m.attr.kind == FileKind::File));
        if leasing && grants {
            let mut renewed = false;
            for ino in granted {
                renewed |= table.grant(holder, ino, write, &self.leases.counters);
            }
            drop(table);
            if renewed {
                self.leases.wake();
            }
        }
        Outcome::Answered(Ok(reply))
    }

    /// Counters of the background workers, leases and sessions.
    fn worker_status(&self) -> WorkerStatus {
        let (repair, gc) = (&self.repair, &self.gc);
        let get = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        WorkerStatus {
            shards_rebuilt: get(&repair.shards_rebuilt),
            chunks_failed_repair: get(&repair.chunks_failed),
            repair_backlog: get(&repair.backlog),
            chunks_collected: get(&gc.chunks_deleted),
            orphans_deleted: get(&gc.orphans_deleted),
            sweeps_aborted: get(&gc.sweeps_aborted),
            gc_passes: gc.passes.completed(),
            leases_held: self.leases.lock().count(),
            leases_granted: get(&self.leases.counters.granted),
            leases_recalled: get(&self.leases.counters.recalled),
            leases_revoked: get(&self.leases.counters.revoked),
            sessions: self.sessions.mounts(),
            mount_requests: get(&self.mount_requests),
        }
    }

    /// The metrics text: request counts and latencies, and what metad's state holds now.
    pub async fn render_metrics(self: Arc<Self>) -> String {
        let server = self.clone();
        let values = tokio::task::spawn_blocking(move || server.metric_values()).await;
        self.metrics.snapshot.set(values.unwrap_or_default());
        shardfs_rpc::metrics::encode(&self.metrics.registry)
    }

    fn metric_values(&self) -> Vec<Value> {
        let w = self.worker_status();
        let mut values = vec![
            Value::counter(
                "shardfs_metad_shards_rebuilt",
                "Shards rebuilt by repair",
                w.shards_rebuilt,
            ),
            Value::counter(
                "shardfs_metad_repair_failures",
                "Chunks whose repair failed",
                w.chunks_failed_repair,
            ),
            Value::gauge(
                "shardfs_metad_repair_backlog",
                "Chunks waiting for repair",
                w.repair_backlog,
            ),
            Value::counter(
                "shardfs_metad_chunks_collected",
                "Unreferenced chunks deleted",
                w.chunks_collected,
            ),
            Value::counter(
                "shardfs_metad_orphans_deleted",
                "Orphan shards deleted",
                w.orphans_deleted,
            ),
            Value::counter(
                "shardfs_metad_gc_sweeps_aborted",
                "Orphan sweeps aborted",
                w.sweeps_aborted,
            ),
            Value::gauge("shardfs_metad_leases_held", "Leases mounts hold", w.leases_held),
            Value::counter("shardfs_metad_leases_granted", "Leases granted", w.leases_granted),
            Value::counter("shardfs_metad_leases_recalled", "Leases recalled", w.leases_recalled),
            Value::counter(
                "shardfs_metad_leases_revoked",
                "Leases revoked unreleased",
                w.leases_revoked,
            ),
            Value::gauge("shardfs_metad_sessions", "Client sessions open", w.sessions),
        ];
        let down = self.members.lost(std::time::Duration::ZERO);
        if let Ok(c) = self.store.catalogue_stats(&down) {
            values.extend([
                Value::gauge("shardfs_metad_chunks", "Chunks in the catalogue", c.chunks),
                Value::gauge(
                    "shardfs_metad_chunk_bytes",
                    "Bytes of catalogued chunks",
                    c.chunk_bytes,
                ),
                Value::gauge(
                    "shardfs_metad_degraded_chunks",
                    "Chunks short of full redundancy",
                    c.degraded_chunks,
                ),
                Value::gauge(
                    "shardfs_metad_unhealthy_shards",
                    "Shards marked unhealthy",
                    c.unhealthy_shards,
                ),
            ]);
        }
        let chunkds = self.members.status();
        let each = |name, help, value: fn(&crate::proto::ChunkdStatus) -> u64| {
            chunkds.iter().map(move |c| {
                let zone = c.zone.clone().unwrap_or_default();
                Value::gauge(name, help, value(c)).with("chunkd", c.id.clone()).with("zone", zone)
            })
        };
        values.extend(each(
            "shardfs_metad_chunkd_up",
            "Whether a chunkd is up (1) or down (0)",
            |c| u64::from(c.up),
        ));
        values.extend(each("shardfs_metad_chunkd_capacity_bytes", "A chunkd's disk size", |c| {
            c.capacity_bytes
        }));
        values.extend(each("shardfs_metad_chunkd_free_bytes", "A chunkd's free disk space", |c| {
            c.free_bytes
        }));
        values
    }

    /// Recalls, in the background, the oldest leases of a session past its lease limit: a
    /// mount that walks a big tree would otherwise hold a lease on every inode it saw.
    fn shed_leases(self: &Arc<Self>, holder: Holder) {
        let limit = self.sessions.limits().leases;
        let excess = self.leases.lock().beyond_limit(holder, limit, std::time::Instant::now());
        if excess.is_empty() {
            return;
        }
        debug!(holder, count = excess.len(), "session past its lease limit; recalling the oldest");
        let server = self.clone();
        tokio::spawn(async move {
            let expiry = server.sessions.timeout();
            server.leases.recall(&excess, expiry, |h| server.sessions.peer_of(h)).await;
        });
    }

    /// Whether a request reads or changes what leases cover.
    fn leases_cover(&self, request: &MetaRequest) -> bool {
        !lease_needs_of(request, |_, _| None).is_empty()
            || matches!(request, MetaRequest::Lookup { .. } | MetaRequest::ReadDir { .. })
    }

    /// The inodes a request reads or changes, and what it needs from other sessions' leases
    /// on them before it runs. A change needs every other lease on what it changes gone; a
    /// read needs other mounts' buffered writes committed.
    fn lease_needs(&self, request: &MetaRequest) -> Vec<(Ino, Need)> {
        lease_needs_of(request, |parent, name| self.store.lookup(parent, name).ok().map(|a| a.ino))
    }

    fn answer(&self, request: MetaRequest, holder: Holder, peer: SocketAddr) -> MetaResponse {
        let store = &self.store;
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
                MetaReply::Made(store.make_node(parent, &name, mode, rdev, cred)?)
            }
            MetaRequest::MakeDir { parent, name, mode, cred } => {
                MetaReply::Made(store.make_dir(parent, &name, mode, cred)?)
            }
            MetaRequest::Symlink { parent, name, target, cred } => {
                MetaReply::Made(store.symlink(parent, &name, &target, cred)?)
            }
            MetaRequest::ReadLink { ino } => MetaReply::Target(store.read_link(ino)?),
            MetaRequest::Unlink { parent, name, .. } => {
                MetaReply::Unlinked(store.unlink(parent, &name)?)
            }
            MetaRequest::RemoveDir { parent, name, .. } => {
                store.remove_dir(parent, &name)?;
                MetaReply::Done
            }
            MetaRequest::Rename { parent, name, new_parent, new_name, mode, cred } => {
                let replaced = store.rename(parent, &name, new_parent, &new_name, mode, &cred)?;
                MetaReply::Renamed { replaced }
            }
            MetaRequest::Link { ino, new_parent, new_name, .. } => {
                MetaReply::Made(store.link(ino, new_parent, &new_name)?)
            }
            MetaRequest::ReadDir { ino, after, limit, .. } => {
                let (parent, entries) = store.read_dir(ino, after, limit.min(4096))?;
                MetaReply::Entries { parent, entries }
            }
            MetaRequest::GetLayout { ino } => MetaReply::Layout(store.layout(ino)?),
            MetaRequest::OpenFile { ino } => {
                MetaReply::Attr(store.open_file(ino, holder, self.sessions.limits().open_files)?)
            }
            MetaRequest::ReleaseFile { ino } => {
                // The lease table is locked first, as for every request it covers: no lease
                // is granted on the file between the check and its deletion.
                let table = self.leases.lock();
                store.release_file(ino, holder, !table.holders_of(ino).is_empty())?;
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
            // F_SETLK (F_SETLKW waits in `handle`).
            MetaRequest::SetLock { ino, owner, lock, .. } => {
                self.locks.set(ino, holder, owner, lock)?;
                MetaReply::Done
            }
            MetaRequest::Fsck { repair } => MetaReply::Fsck(store.fsck(repair)?),
            MetaRequest::ReadInline { chunk } => MetaReply::Data(store.read_inline(chunk)?),
            MetaRequest::ListChunks { after, limit } => {
                MetaReply::Chunks(store.list_chunks(after, limit.min(4096))?)
            }
            MetaRequest::OpenSession { host, resume } => {
                let (id, replaced) = self.sessions.open(peer, host.clone(), resume);
                // Recorded, so it can resume after a restart with what it holds.
                store.save_session(id, &host)?;
                if let Some(implicit) = replaced {
                    self.release_session(implicit);
                }
                // A mount (re)connecting starts with empty caches.
                self.leases.release_holder(id);
                let timeout_ms = self.sessions.timeout().as_millis() as u64;
                MetaReply::Session { id, timeout_ms }
            }
            MetaRequest::Heartbeat if self.sessions.is_explicit(holder) => MetaReply::Done,
            MetaRequest::WriteLease { ino } => {
                let attr = store.get_attr(ino)?;
                if attr.kind != FileKind::File {
                    return Err(MetaError::Invalid("write leases are for regular files".into()));
                }
                MetaReply::Attr(attr)
            }
            MetaRequest::Sync => {
                store.sync()?;
                MetaReply::Done
            }
            MetaRequest::CloseSession => {
                if let Some(id) = self.sessions.close(peer) {
                    info!(holder = id, "client session closed");
                    self.release_session(id);
                }
                MetaReply::Done
            }
            MetaRequest::ReleaseLease { ino, seq } => {
                self.leases.release(holder, ino, seq);
                MetaReply::Done
            }
            MetaRequest::Heartbeat => return Err(MetaError::SessionExpired),
            MetaRequest::Workers => MetaReply::Workers(self.worker_status()),
            MetaRequest::Collect => MetaReply::Collecting { done_after: self.gc.passes.request() },
            MetaRequest::Forget { chunkd } => {
                self.members.forget(&chunkd)?;
                info!(chunkd, "chunkd forgotten");
                MetaReply::Done
            }
            MetaRequest::Drain { chunkd, undo } => {
                if !self.members.set_draining(&chunkd, !undo)? {
                    return Err(MetaError::Invalid(format!("no chunkd {chunkd} is registered")));
                }
                info!(chunkd, draining = !undo, "chunkd drain changed");
                MetaReply::Drained { remaining: store.shards_on(&chunkd)? }
            }
            MetaRequest::Accessed { ino, strict } => MetaReply::Attr(store.accessed(ino, strict)?),
            MetaRequest::Unlock { ino, owner, start, end } => {
                self.locks.unlock(ino, holder, owner, start, end);
                MetaReply::Done
            }
            MetaRequest::PrepareWrite { chunks, avoid } => {
                // Before the catalogue is read: GC must not take what this write will use.
                let limit = self.sessions.limits().prepared_chunks;
                self.intents.record(holder, chunks.iter().map(|c| c.chunk), limit)?;
                let usable: Vec<_> =
                    self.members.usable().into_iter().filter(|c| !avoid.contains(&c.id)).collect();
                let full = self.members.full();
                let encoding = store.settings().encoding;
                let min_shards = self.min_shards(encoding);
                MetaReply::Plans(store.prepare_write(&chunks, |chunk| {
                    let placed =
                        placement::place_new(&chunk.chunk, encoding, min_shards, &usable, full);
                    match placed {
                        Ok(targets) => {
                            if targets.len() < encoding.total()
                                && let Some(held_back) = DEGRADED_LOG.admit()
                            {
                                warn!(
                                    held_back,
                                    "writing degraded: {} of {} shards per chunk placed \
                                     ({} usable chunkds); repair adds the rest",
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
                })?)
            }
            MetaRequest::CommitWrite { ino, stored, inline, extents, mtime } => {
                let attr = store.commit_write(ino, &stored, &inline, &extents, mtime)?;
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
                // Each filesystem once: chunkds sharing a host's disk share its space.
                let mut counted = std::collections::HashSet::new();
                for chunkd in self.members.status().iter().filter(|c| c.up) {
                    let host = chunkd.addr.rsplit_once(':').map_or(&*chunkd.addr, |(h, _)| h);
                    if counted.insert((host.to_owned(), chunkd.filesystem)) {
                        stat.capacity_bytes += chunkd.capacity_bytes;
                        stat.free_bytes += chunkd.free_bytes;
                    }
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
            MetaRequest::CatalogueStats => {
                let down = self.members.lost(std::time::Duration::ZERO);
                MetaReply::CatalogueStats(store.catalogue_stats(&down)?)
            }
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

/// Whether the answer to `request` grants the asking mount read leases on the inodes it
/// tells about (a write lease for `WriteLease`). Mounts rely on exactly this list.
fn grants_leases(request: &MetaRequest) -> bool {
    matches!(
        request,
        MetaRequest::Lookup { .. }
            | MetaRequest::GetAttr { .. }
            | MetaRequest::SetAttr { .. }
            | MetaRequest::MakeNode { .. }
            | MetaRequest::MakeDir { .. }
            | MetaRequest::Symlink { .. }
            | MetaRequest::Link { .. }
            | MetaRequest::ReadDir { .. }
            | MetaRequest::GetLayout { .. }
            | MetaRequest::WriteLease { .. }
    )
}

/// [`MetadServer::lease_needs`], finding named children with `child`.
fn lease_needs_of(
    request: &MetaRequest,
    child: impl Fn(Ino, &[u8]) -> Option<Ino>,
) -> Vec<(Ino, Need)> {
    use Need::{Read, Write};
    match request {
        MetaRequest::Lookup { .. } | MetaRequest::ReadDir { .. } => Vec::new(),
        MetaRequest::GetAttr { ino } | MetaRequest::GetLayout { ino } => vec![(*ino, Read)],
        MetaRequest::SetAttr { ino, .. }
        | MetaRequest::Allocate { ino, .. }
        | MetaRequest::CommitWrite { ino, .. }
        | MetaRequest::SetXattr { ino, .. }
        | MetaRequest::RemoveXattr { ino, .. }
        | MetaRequest::WriteLease { ino } => vec![(*ino, Write)],
        MetaRequest::MakeNode { parent, .. }
        | MetaRequest::MakeDir { parent, .. }
        | MetaRequest::Symlink { parent, .. } => vec![(*parent, Write)],
        MetaRequest::Unlink { parent, name, .. } | MetaRequest::RemoveDir { parent, name, .. } => {
            let mut needs = vec![(*parent, Write)];
            needs.extend(child(*parent, name).map(|ino| (ino, Write)));
            needs
        }
        MetaRequest::Rename { parent, name, new_parent, new_name, .. } => {
            let mut needs = vec![(*parent, Write), (*new_parent, Write)];
            needs.extend(child(*parent, name).map(|ino| (ino, Write)));
            needs.extend(child(*new_parent, new_name).map(|ino| (ino, Write)));
            needs
        }
        MetaRequest::Link { ino, new_parent, .. } => vec![(*ino, Write), (*new_parent, Write)],
        MetaRequest::CloneRange { src, dst, .. } => vec![(*src, Read), (*dst, Write)],
        _ => Vec::new(),
    }
}

/// Runs a request's SQLite work, which blocks. On a multi-threaded runtime it runs right
/// here, the worker's other tasks moving to another thread meanwhile (`block_in_place`):
/// handing it to the blocking pool and back cost two thread wake-ups per request, about a
/// third of a lookup's round trip on a 2-core machine (`docs/performance.md`).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, shardfs_rpc::Error> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(work)),
        _ => tokio::task::spawn_blocking(work).await.map_err(|e| {
            shardfs_rpc::Error::Io(std::io::Error::other(format!("request handler failed: {e}")))
        }),
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
        if service == Service::Membership {
            let request: MembershipRequest = shardfs_rpc::decode(&body)?;
            let server = self.clone();
            let response = blocking(move || server.membership(request, peer)).await?;
            return Ok(shardfs_rpc::encode(&response));
        }
        let mut request: MetaRequest = shardfs_rpc::decode(&body)?;
        let (op, started): (&'static str, _) = ((&request).into(), std::time::Instant::now());
        // The operation only: requests carry names and small files' content.
        debug!(op, %peer, "request");
        // What the request takes or releases (open files, locks, intents, leases) is its
        // session's; asking also keeps the session alive.
        let holder = self.sessions.of(peer);
        if self.sessions.is_explicit(holder)
            && !matches!(request, MetaRequest::Heartbeat | MetaRequest::ReleaseLease { .. })
        {
            self.mount_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        loop {
            let server = self.clone();
            // The turn ends before any wait below: a lock request waiting for another
            // owner's unlock holds no turn (enough of them would leave none for the unlock).
            let turn = self.gate.enter(peer).await;
            let outcome = blocking(move || server.answer_leased(request, holder, peer)).await?;
            drop(turn);
            match outcome {
                Outcome::Answered(response) => {
                    self.metrics.requests.record(op, response.is_ok(), started.elapsed());
                    self.shed_leases(holder);
                    return Ok(shardfs_rpc::encode(&response));
                }
                Outcome::Recall(again, conflicts) => {
                    let expiry = self.sessions.timeout();
                    self.leases.recall(&conflicts, expiry, |h| self.sessions.peer_of(h)).await;
                    request = again;
                }
                Outcome::WaitRecalls(again, ino) => {
                    self.leases.wait_recalls(ino).await;
                    request = again;
                }
                Outcome::WaitLock(again, version) => {
                    self.locks.changed_since(version).await;
                    if !self.sessions.exists(holder) {
                        let gone = MetaError::Invalid("client disconnected while waiting".into());
                        return Ok(shardfs_rpc::encode(&MetaResponse::Err(gone)));
                    }
                    request = again;
                }
            }
        }
    }

    fn connected(&self, service: Service, peer: SocketAddr, pusher: shardfs_rpc::Pusher) {
        if service == Service::Metad {
            self.leases.connected(peer, pusher);
        }
    }

    fn disconnected(&self, service: Service, peer: SocketAddr) {
        if service != Service::Metad {
            return;
        }
        self.leases.disconnected(peer);
        match self.sessions.disconnected(peer) {
            Some(Departed::Ended(holder)) => self.release_session(holder),
            // Read leases protect only the mount's caches, which it stops using when it
            // loses the connection, and drops in full when it resumes: another mount need
            // not wait for them. Write leases may cover buffered writes, committed after a
            // reconnect; they last until the session resumes or expires.
            Some(Departed::Detached(holder)) => self.leases.release_reads(holder),
            None => {}
        }
    }
}
