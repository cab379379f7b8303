//! metad's request handler: the client protocol (`Metad`) and chunkd membership.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};

use bytes::Bytes;
use shardfs_chunk_api::membership::MembershipRequest;
use shardfs_rpc::metrics::{OpMetrics, Registry, Snapshot, Value};
use shardfs_rpc::sync::{blocking, blocking_in_place};
use shardfs_rpc::{ClusterKey, DaemonAuth, Handler, Service};
use tracing::{debug, info, warn};

use crate::fair::FairGate;
use crate::gc::GcStats;
use crate::grace::Grace;
use crate::intents::Intents;
use crate::leases::{Bar, Conflict, Leases, Need, Table};
use crate::lifecycle::LifecycleStats;
use crate::locks::LockTable;
use crate::members::Members;
use crate::repair::RepairStats;
use crate::requests::{Caller, Family, Grant, Leasing, Target, members};
use crate::sessions::{Departed, SessionLimits, Sessions};
use crate::store::{Holder, Holdings, Store};
use shardfs_meta_api::proto::{
    Attr, Envelope, FileKind, Ino, Made, MetaError, MetaReply, MetaRequest, MetaResponse,
    SessionRequest, WorkerStatus,
};

pub struct MetadServer {
    pub(crate) store: Arc<Store>,
    pub(crate) members: Arc<Members>,
    pub(crate) locks: LockTable,
    pub(crate) repair: Arc<RepairStats>,
    pub(crate) intents: Arc<Intents>,
    pub(crate) gc: Arc<GcStats>,
    pub(crate) lifecycle: Arc<LifecycleStats>,
    pub(crate) sessions: Sessions,
    pub(crate) leases: Leases,
    /// Waits for the mounts whose sessions this server took up (see `crate::grace`).
    pub(crate) grace: Grace,
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
    pub(crate) min_shards: Option<u8>,
}

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
pub enum Outcome {
    Answered(MetaResponse),
    Recall(MetaRequest, Vec<Conflict>),
    /// A write lease waits while another request recalls leases on its file.
    WaitRecalls(MetaRequest, Ino),
    /// F_SETLKW waits for locks to be let go after the lock table's version given.
    WaitLock(MetaRequest, u64),
    /// A change waits for other changes to these inodes to end (and for reads that barred
    /// them to be answered).
    WaitChanges(MetaRequest, Vec<Ino>),
    /// A read found some of what it read changing, or changed while it ran: it runs again
    /// once they are not being changed.
    Stale(MetaRequest, Vec<Ino>),
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
        let grace = Grace::new(holdings.sessions.iter().map(|(holder, _)| *holder));
        sessions.restore(holdings.sessions);
        MetadServer {
            grace,
            auth,
            locks: LockTable::recorded(store.clone(), holdings.locks),
            store,
            members: Arc::new(members),
            repair: Arc::default(),
            intents: Arc::default(),
            gc: Arc::default(),
            lifecycle: Arc::default(),
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

    /// This server, holding `lock` (its data directory's) for as long as it lives.
    pub fn holding(self, lock: std::fs::File) -> MetadServer {
        MetadServer { _data_lock: Some(lock), ..self }
    }

    /// The key connections to this metad are authenticated with.
    pub fn key(&self) -> ClusterKey {
        self.auth.key
    }

    /// Releases what a session that ended held: its locks, write intents and open files.
    pub(crate) fn release_session(&self, holder: Holder) {
        self.leases.release_holder(holder);
        self.locks.release_holder(holder);
        self.intents.release_holder(holder);
        let store = self.store.clone();
        tokio::spawn(blocking(move || {
            if let Err(e) = store.release_holder(holder) {
                warn!(holder, "cannot release the files of a departed client: {e}");
            }
        }));
    }

    /// Deletes the files that lost their last name and lingered long enough, except those a
    /// session holds a lease on: a mount may have opened one under its lease without telling
    /// metad. Their leases are recalled (settling a recall registers such opens), and they
    /// are looked at again after lingering once more.
    pub fn reclaim_lingered(self: &Arc<Self>) -> Result<(), MetaError> {
        let now = std::time::Instant::now();
        let lingered = self.store.lingered(now);
        if lingered.is_empty() {
            return Ok(());
        }
        // Marked as changing while the lease table is locked, as a close does: no lease is
        // granted on a file between the check and its deletion.
        let mut table = self.leases.lock();
        let (leased, free): (Vec<Ino>, Vec<Ino>) =
            lingered.into_iter().partition(|&ino| !table.holders_of(ino).is_empty());
        let conflicts: Vec<Conflict> =
            leased.iter().flat_map(|&ino| table.holders_of(ino)).collect();
        let changing = self.leases.begin_change(&mut table, free.clone());
        drop(table);
        self.store.linger_on(&leased, now);
        self.store.reclaim_unless_open(free)?;
        drop(changing);
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

    /// Answers `request`, unless leases of other sessions must be recalled first.
    pub(crate) fn answer_leased(&self, request: MetaRequest, caller: Caller) -> Outcome {
        match request {
            MetaRequest::Names(request) => self.run(request, caller),
            MetaRequest::Attrs(request) => self.run(request, caller),
            MetaRequest::Data(request) => self.run(request, caller),
            MetaRequest::Xattrs(request) => self.run(request, caller),
            MetaRequest::Locks(request) => self.run(request, caller),
            MetaRequest::Sessions(request) => self.run(request, caller),
            MetaRequest::Catalogue(request) => self.run(request, caller),
            MetaRequest::Members(request) => self.run(request, caller),
            MetaRequest::Volume(request) => self.run(request, caller),
            MetaRequest::Batches(request) => self.run(request, caller),
        }
    }

    /// Runs a request of any family as its family declares. One that reads or changes what
    /// leases cover checks for conflicting leases under the lease table's lock, runs its
    /// store operation outside it, and takes it again to grant the asking mount what its
    /// answer grants. A change marks the inodes it changes first: no other change to them
    /// begins, and no read of them is granted a lease, until it has ended, so no grant lands
    /// between a recall and the change it made way for, and a lease never covers a state
    /// that a change is replacing. Changes to different inodes, and reads, run side by side
    /// (and changes are committed together, see `store/group_commit.rs`).
    fn run<F: Family>(&self, request: F, caller: Caller) -> Outcome {
        if let Err(e) = request.permitted(&*self.store) {
            return Outcome::Answered(Err(e));
        }
        let Leasing::Covered { needs, grant } = request.leasing() else {
            return request.answer(self, caller);
        };
        let holder = caller.holder;
        if matches!(grant, Grant::Write { .. }) && !self.sessions.is_explicit(holder) {
            // Only mounts cache, so only their sessions take write leases.
            let why = "only a mount's session can take a write lease";
            return Outcome::Answered(Err(MetaError::Invalid(why.into())));
        }
        let mut table = self.leases.lock();
        if let Grant::Write { ino } = grant
            && table.is_recalling(ino)
        {
            return Outcome::WaitRecalls(request.into(), ino);
        }
        // A lookup or listing in a directory a change is recalling the leases on waits for
        // it (see `Table::recalling_for_change`). Neither holds anything in its mount that
        // the recall's settling needs.
        if let Grant::Found { dir: Some(dir) } = grant
            && table.is_recalling_for_change(dir)
        {
            return Outcome::WaitRecalls(request.into(), dir);
        }
        // Names resolve to what they name now: a change to a directory's names marks the
        // directory, and one in progress makes this request wait below, then look again.
        let needs: Vec<(Ino, Need)> = needs
            .into_iter()
            .filter_map(|(target, need)| match target {
                Target::Inode(ino) => Some((ino, need)),
                Target::Entry(parent, name) => {
                    self.store.lookup(parent, name).ok().map(|a| (a.ino, need))
                }
            })
            .collect();
        let inos: Vec<Ino> = needs.iter().map(|&(ino, _)| ino).collect();
        let reads = matches!(grant, Grant::Read | Grant::Found { .. })
            && needs.iter().all(|&(_, need)| need == Need::Read);
        if reads && table.is_changing(&inos) {
            return Outcome::Stale(request.into(), inos);
        }
        if !reads && !table.may_change(&inos) {
            return Outcome::WaitChanges(request.into(), inos);
        }
        let mut conflicts = Vec::new();
        for &(ino, need) in &needs {
            table.conflicts(holder, ino, need, &mut conflicts);
        }
        if !conflicts.is_empty() {
            return Outcome::Recall(request.into(), conflicts);
        }
        if reads {
            let began = table.read_begins();
            drop(table);
            return self.read(request, caller, grant, began);
        }
        let changing = self.leases.begin_change(&mut table, inos);
        drop(table);
        let outcome = request.answer(self, caller);
        let mut table = changing.end();
        let reply = match outcome {
            Outcome::Answered(Ok(reply)) => reply,
            other => return other,
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
        let granted = granted_by(grant, &reply);
        self.grant(table, holder, grant, &reply, granted);
        Outcome::Answered(Ok(reply))
    }

    /// Answers a request that only reads what leases cover, outside the lease table's lock
    /// (begun at `began`), then checks its answer under the lock: it grants nothing while
    /// another mount buffers writes to what it read (those are recalled and it runs again),
    /// and if any of what it read is being changed or was changed meanwhile, its answer may
    /// be out of date already, so it runs again (`handle`, which after a few tries bars new
    /// changes to what it reads). This holds for tools too, which get no leases: what they
    /// learn of a change in progress, they could act on before its mount is granted leases.
    fn read<F: Family>(&self, request: F, caller: Caller, grant: Grant, began: u64) -> Outcome {
        let again = request.clone();
        let outcome = request.answer(self, caller);
        let mut table = self.leases.lock();
        let reply = match outcome {
            Outcome::Answered(Ok(reply)) => reply,
            other => {
                table.read_ended(began, &[]);
                return other;
            }
        };
        let granted = granted_by(grant, &reply);
        let changed = table.read_ended(began, &granted);
        if changed || table.is_changing(&granted) {
            return Outcome::Stale(again.into(), granted);
        }
        // What was read must not sit in another mount's write buffers.
        let mut conflicts = Vec::new();
        for &ino in &granted {
            table.conflicts(caller.holder, ino, Need::Read, &mut conflicts);
        }
        if !conflicts.is_empty() {
            return Outcome::Recall(again.into(), conflicts);
        }
        self.grant(table, caller.holder, grant, &reply, granted);
        Outcome::Answered(Ok(reply))
    }

    /// Grants `holder` leases on `granted`, as `grant` says, if its session is a mount's.
    fn grant(
        &self,
        mut table: MutexGuard<'_, Table>,
        holder: Holder,
        grant: Grant,
        reply: &MetaReply,
        granted: Vec<Ino>,
    ) {
        if !self.sessions.is_explicit(holder) {
            return;
        }
        let write = match grant {
            Grant::Write { .. } | Grant::Batched => true,
            Grant::Created => {
                matches!(reply, MetaReply::Made(m) if matches!(m.attr.kind, FileKind::File | FileKind::Dir))
            }
            Grant::Nothing | Grant::Read | Grant::Found { .. } => false,
        };
        let mut renewed = false;
        for ino in granted {
            renewed |= table.grant(holder, ino, write, &self.leases.counters);
        }
        drop(table);
        if renewed {
            self.leases.wake();
        }
    }

    /// Counters of the background workers, leases and sessions.
    pub(crate) fn worker_status(&self) -> WorkerStatus {
        let (repair, gc) = (&self.repair, &self.gc);
        let get = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        WorkerStatus {
            shards_rebuilt: get(&repair.shards_rebuilt),
            chunks_failed_repair: get(&repair.chunks_failed),
            repair_backlog: get(&repair.backlog),
            chunks_collected: get(&gc.chunks_deleted),
            chunks_moved: get(&self.lifecycle.chunks_moved),
            bytes_moved: get(&self.lifecycle.bytes_moved),
            chunks_failed_move: get(&self.lifecycle.chunks_failed),
            lifecycle_backlog: get(&self.lifecycle.backlog),
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
        let values = blocking(move || server.metric_values()).await;
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
                "shardfs_metad_lifecycle_chunks_moved",
                "Chunks moved to another storage class",
                w.chunks_moved,
            ),
            Value::counter(
                "shardfs_metad_lifecycle_bytes_moved",
                "Bytes of chunks moved to another storage class",
                w.bytes_moved,
            ),
            Value::counter(
                "shardfs_metad_lifecycle_failures",
                "Chunk moves that failed (tried again later)",
                w.chunks_failed_move,
            ),
            Value::gauge(
                "shardfs_metad_lifecycle_backlog",
                "Chunks waiting to move to another storage class",
                w.lifecycle_backlog,
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
        let each = |name, help, value: fn(&shardfs_meta_api::proto::ChunkdStatus) -> u64| {
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
}

/// How many times a read may find what it read changed before it bars new changes to it:
/// enough for a read to get through beside a busy writer, few enough that none starves.
const OPTIMISTIC_READS: u32 = 3;

/// The inodes `reply` grants leases on, as `grant` says.
fn granted_by(grant: Grant, reply: &MetaReply) -> Vec<Ino> {
    let (mut granted, write) = match grant {
        Grant::Nothing => return Vec::new(),
        // A lookup's answer covers its directory's entry; a listing's, the directory.
        Grant::Found { dir } => (dir.into_iter().collect(), false),
        Grant::Read | Grant::Created => (Vec::new(), false),
        Grant::Write { .. } | Grant::Batched => (Vec::new(), true),
    };
    // A file with no name left gets no read lease: under a lease a mount opens a file
    // without telling metad, and a mount that keeps looking at a deleted file (by handle,
    // say) would keep it from ever going (see `reclaim_lingered`). The client takes none
    // either; a write lease is asked for, by a writer that has it open. A new name's
    // answer tells about its directory too, on which the asking mount needs no new lease:
    // it already has its read lease, or none to keep the attributes under.
    let leasable = |attr: &Attr| (attr.nlink > 0 || write).then_some(attr.ino);
    match reply {
        MetaReply::Attr(attr) | MetaReply::Made(Made { attr, .. }) => {
            granted.extend(leasable(attr))
        }
        MetaReply::Layout(layout) => granted.extend(leasable(&layout.attr)),
        MetaReply::Entries { entries, .. } => granted.extend(entries.iter().map(|e| e.attr.ino)),
        MetaReply::Batched { made, .. } => granted.extend(made),
        _ => {}
    }
    granted
}

/// Runs a request's SQLite work, which blocks, on the handler's own thread
/// (`blocking_in_place`): handing it to the blocking pool and back cost two thread wake-ups
/// per request, about a third of a lookup's round trip on a 2-core machine
/// (`docs/performance.md`).
async fn in_place<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, shardfs_rpc::Error> {
    blocking_in_place(work).await.map_err(|e| shardfs_rpc::Error::Io(std::io::Error::other(e)))
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
            let response = in_place(move || members::membership(&server, request, peer)).await?;
            return Ok(shardfs_rpc::encode(&response));
        }
        let Envelope { seq, mut request } = shardfs_rpc::decode(&body)?;
        let (op, started) = (request.op(), std::time::Instant::now());
        // The operation only: requests carry names and small files' content.
        debug!(op, %peer, "request");
        // What the request takes or releases (open files, locks, intents, leases) is its
        // session's; asking also keeps the session alive.
        let holder = self.sessions.of(peer);
        if self.sessions.is_explicit(holder)
            && !matches!(
                request,
                MetaRequest::Sessions(
                    SessionRequest::Heartbeat | SessionRequest::ReleaseLease { .. }
                )
            )
        {
            self.mount_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.grace.admit(holder, &request).await;
        // Tries of a read that found what it read changing, and what it then bars.
        let (mut stale_reads, mut bar) = (0, None);
        loop {
            let server = self.clone();
            // The turn ends before any wait below: a lock request waiting for another
            // owner's unlock holds no turn (enough of them would leave none for the unlock).
            let turn = self.gate.enter(peer).await;
            let outcome = in_place(move || {
                crate::store::numbered(holder, seq, || {
                    server.answer_leased(request, Caller { holder, peer })
                })
            })
            .await?;
            drop(turn);
            match outcome {
                Outcome::Answered(response) => {
                    self.metrics.requests.record(op, response.is_ok(), started.elapsed());
                    self.shed_leases(holder);
                    return Ok(shardfs_rpc::encode(&response));
                }
                Outcome::Recall(again, conflicts) => {
                    // A recall's holder may have to commit to what this read barred.
                    bar = None;
                    let expiry = self.sessions.timeout();
                    self.leases.recall(&conflicts, expiry, |h| self.sessions.peer_of(h)).await;
                    request = again;
                }
                Outcome::WaitChanges(again, inos) => {
                    self.leases.wait_until(|table| table.may_change(&inos)).await;
                    request = again;
                }
                Outcome::Stale(again, inos) => {
                    stale_reads += 1;
                    if stale_reads >= OPTIMISTIC_READS {
                        bar.get_or_insert_with(|| Bar::new(&self.leases)).add(&inos);
                    }
                    self.leases.wait_until(|table| !table.is_changing(&inos)).await;
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
