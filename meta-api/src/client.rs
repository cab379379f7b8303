//! The typed metad client used by the FUSE client and the CLI.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardfs_chunk_api::{ChunkId, ShardId};
use shardfs_rpc::{ClientOptions, Hello, Replicas, Service};
use tracing::{info, warn};

use crate::file_flags::FlagChange;
use crate::proto::*;
use shardfs_rpc::sync::Lock as _;

#[derive(Debug, thiserror::Error)]
pub enum MetaClientError {
    #[error(transparent)]
    Rpc(#[from] shardfs_rpc::Error),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("metad sent an unexpected reply to {0}")]
    UnexpectedReply(&'static str),
    /// The client was shut down ([`MetaClient::shut_down`]): nothing more is sent.
    #[error("this client was shut down")]
    ShutDown,
}

pub type Result<T> = std::result::Result<T, MetaClientError>;

pub struct MetaClient {
    rpc: Replicas,
    session: Option<Arc<SessionHello>>,
    /// Numbers of the session's requests (`Seq`).
    numbers: Numbers,
    /// When the latest request metad answered was sent (see [`MetaClient::confirmed_at`]).
    confirmed: Mutex<Option<Instant>>,
    /// What requests wait for before they go (see [`Barrier`]).
    barrier: std::sync::OnceLock<std::sync::Weak<dyn Barrier>>,
    /// Set by [`MetaClient::shut_down`].
    shut: std::sync::atomic::AtomicBool,
}

/// The changes a mount answered itself and has not sent yet (its batches): a request that
/// could depend on them waits until they are sent, so metad sees the mount's changes and
/// requests in the order the mount made them.
pub trait Barrier: Send + Sync {
    /// Resolves once what was queued before the call has been sent and answered.
    fn passed(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
}

/// Whether `request` must follow the changes queued before it: all but the batches
/// themselves and what cannot depend on them (chunk placement and content, leases given
/// back, heartbeats, inode numbers). A file whose making is still queued has its chunks
/// placed in the volume's hot class (see `Store::write_class`).
fn follows_batches(request: &MetaRequest) -> bool {
    !matches!(
        request,
        MetaRequest::Batches(_)
            | MetaRequest::Sessions(
                SessionRequest::ReserveInos { .. }
                    | SessionRequest::ReleaseLease { .. }
                    | SessionRequest::Heartbeat
                    | SessionRequest::ReclaimDone
            )
            | MetaRequest::Data(DataRequest::PrepareWrite { .. } | DataRequest::ReadInline { .. })
    )
}

/// A request number kept across tries: a batch sent again with it after a failed try is
/// applied once (metad answers the first try's outcome if that was applied).
pub struct Ticket<'a>(Waiting<'a>);

/// Numbers a session's requests, and knows which are still waiting for their answers.
#[derive(Default)]
struct Numbers {
    state: Mutex<NumbersState>,
}

#[derive(Default)]
struct NumbersState {
    next: u64,
    waiting: std::collections::BTreeSet<u64>,
}

impl Numbers {
    fn take(&self) -> Seq {
        let mut state = self.state.locked();
        state.next += 1;
        let n = state.next;
        state.waiting.insert(n);
        let answered_below = *state.waiting.first().unwrap_or(&n);
        Seq { n, answered_below }
    }

    fn answered(&self, n: u64) {
        self.state.locked().waiting.remove(&n);
    }
}

/// Marks a numbered request answered however its call ends, a cancelled one included: one
/// left waiting would hold `answered_below` back, and metad would keep every outcome of the
/// session from then on.
struct Waiting<'a>(&'a Numbers, Option<Seq>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(seq) = self.1 {
            self.0.answered(seq.n);
        }
    }
}

/// What a mount hears from metad besides answers.
pub trait SessionEvents: Send + Sync {
    /// metad pushed `push`. Called in arrival order on the task reading the connection:
    /// must not block.
    fn pushed(&self, push: MetaPush);
    /// A session was opened or resumed on a new connection, answered by the metad named
    /// `incarnation`: it holds no read lease for the session, and if it is not the metad
    /// that answered before, none at all (see `ReclaimDone`).
    fn session_started(&self, incarnation: u64);
    /// The connection the session used is gone: metad drops the session's read leases at
    /// once (write leases last until the session expires).
    fn connection_lost(&self);
}

/// Opens a session on the first connection and resumes it on every reconnect.
struct SessionHello {
    host: String,
    /// The session's id, 0 until one is open.
    id: AtomicU64,
    timeout: Mutex<Duration>,
    events: Arc<dyn SessionEvents>,
}

impl Hello for SessionHello {
    fn request(&self) -> Vec<u8> {
        let resume = Some(self.id.load(Ordering::Relaxed)).filter(|id| *id != 0);
        let request = SessionRequest::OpenSession { host: self.host.clone(), resume };
        shardfs_rpc::encode(&Envelope { seq: None, request: request.into() })
    }

    fn answered(&self, response: &[u8]) -> std::result::Result<(), shardfs_rpc::Error> {
        let response: MetaResponse = shardfs_rpc::decode(response)?;
        if let Some(leader) = not_leader(&response) {
            return Err(shardfs_rpc::Error::NotLeader { addr: String::new(), leader });
        }
        let Ok(MetaReply::Session { id, timeout_ms, incarnation }) = response else {
            return Err(shardfs_rpc::Error::BadFrame(format!("session refused: {response:?}")));
        };
        self.adopt(id, timeout_ms, incarnation);
        Ok(())
    }

    fn lost(&self) {
        self.events.connection_lost();
    }
}

impl SessionHello {
    /// Records the session metad granted.
    fn adopt(&self, id: u64, timeout_ms: u64, incarnation: u64) {
        let previous = self.id.swap(id, Ordering::Relaxed);
        if previous == 0 {
            info!(id, "metad session opened");
        } else if previous != id {
            warn!(previous, id, "metad session expired: its locks and open files were released");
        }
        *self.timeout.locked() = Duration::from_millis(timeout_ms);
        self.events.session_started(incarnation);
    }
}

/// The leader a replica's answer names, if it says it is not the leader.
fn not_leader(response: &MetaResponse) -> Option<Option<String>> {
    match response {
        Err(MetaError::NotLeader(leader)) => Some(leader.clone()),
        _ => None,
    }
}

/// Sends a request and unpacks the one reply variant it may get.
macro_rules! call {
    ($self:ident, $request:expr, $op:literal, $pattern:pat => $value:expr) => {
        match $self.call($request).await? {
            $pattern => Ok($value),
            _ => Err(MetaClientError::UnexpectedReply($op)),
        }
    };
}

impl MetaClient {
    /// A client for tools: what it holds (open files, locks) ends with its connection.
    /// `addrs` is metad's address, or its replicas' separated by commas.
    pub fn new(addrs: &str, options: ClientOptions) -> MetaClient {
        let rpc = Replicas::new(addrs, Service::Metad, options, |c| c);
        MetaClient {
            rpc,
            session: None,
            numbers: Numbers::default(),
            confirmed: Mutex::default(),
            barrier: Default::default(),
            shut: Default::default(),
        }
    }

    /// A client with a session (a mount): what it holds outlives a lost connection until
    /// the session expires; [`heartbeat`](Self::heartbeat) keeps it alive while idle. Lease
    /// recalls and session starts go to `events`.
    pub fn with_session(
        addrs: &str,
        options: ClientOptions,
        host: String,
        events: Arc<dyn SessionEvents>,
    ) -> MetaClient {
        let pushes = events.clone();
        let on_push =
            Arc::new(move |body: bytes::Bytes| match shardfs_rpc::decode::<MetaPush>(&body) {
                Ok(push) => pushes.pushed(push),
                Err(e) => warn!("ignoring an undecodable push from metad: {e}"),
            });
        let session = Arc::new(SessionHello {
            host,
            id: AtomicU64::new(0),
            timeout: Mutex::new(Duration::ZERO),
            events,
        });
        let hello = session.clone();
        let rpc = Replicas::new(addrs, Service::Metad, options, move |client| {
            client.with_hello(hello.clone()).with_push(on_push.clone())
        });
        MetaClient {
            rpc,
            session: Some(session),
            numbers: Numbers::default(),
            confirmed: Mutex::default(),
            barrier: Default::default(),
            shut: Default::default(),
        }
    }

    /// Sends nothing more: every request from now on fails with
    /// [`MetaClientError::ShutDown`] (a mount shut down, `FS_IOC_SHUTDOWN`).
    pub fn shut_down(&self) {
        self.shut.store(true, Ordering::SeqCst);
    }

    /// Makes requests wait for `barrier` (set once; later calls are ignored).
    pub fn set_barrier(&self, barrier: std::sync::Weak<dyn Barrier>) {
        let _ = self.barrier.set(barrier);
    }

    /// How often to send heartbeats so the session never expires: a third of its timeout,
    /// once a session is open.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        let session = self.session.as_ref()?;
        let timeout = *session.timeout.locked();
        (!timeout.is_zero()).then(|| timeout / 3)
    }

    /// Keeps the session alive; after an expiry, opens a new one.
    pub async fn heartbeat(&self) -> Result<()> {
        self.heartbeat_within(self.rpc.request_timeout()).await
    }

    /// A heartbeat that gives up on a replica that does not answer within `timeout` and
    /// looks for the leader elsewhere: how a mount finds out soon that its leader is gone.
    pub async fn heartbeat_within(&self, timeout: Duration) -> Result<()> {
        let ticket = self.ticket();
        let heartbeat = SessionRequest::Heartbeat.into();
        match self.send_numbered(&ticket, heartbeat, Some(timeout)).await {
            Err(MetaClientError::Meta(MetaError::SessionExpired)) => {
                let Some(session) = &self.session else { return Ok(()) };
                let request =
                    SessionRequest::OpenSession { host: session.host.clone(), resume: None };
                let (id, timeout_ms, incarnation) = call!(self, request, "open session",
                    MetaReply::Session { id, timeout_ms, incarnation } => (id, timeout_ms, incarnation))?;
                session.adopt(id, timeout_ms, incarnation);
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Tells a metad that took over that this mount has sent what it changed under the
    /// leases of the one before.
    pub async fn reclaim_done(&self) -> Result<()> {
        call!(self, SessionRequest::ReclaimDone, "reclaim done", MetaReply::Done => ())
    }

    /// Ends the session: metad releases what it held at once.
    pub async fn close_session(&self) -> Result<()> {
        call!(self, SessionRequest::CloseSession, "close session", MetaReply::Done => ())
    }

    /// Makes every metadata change committed so far durable against power loss.
    pub async fn sync(&self) -> Result<()> {
        call!(self, VolumeRequest::Sync, "sync", MetaReply::Done => ())
    }

    /// metad's address, or each replica's.
    pub fn replicas(&self) -> Vec<String> {
        self.rpc.list()
    }

    /// The options metad is called with.
    pub fn options(&self) -> ClientOptions {
        self.rpc.options()
    }

    /// The address of the replica calls go to first: the leader, as far as this client
    /// knows.
    pub fn addr(&self) -> String {
        self.rpc.leader()
    }

    async fn call(&self, request: impl Into<MetaRequest>) -> Result<MetaReply> {
        self.send(request.into(), false).await
    }

    /// Sends `request` to the leader; with `unbounded`, waits for its answer without a
    /// timeout. A mount's request carries its number in the session, the same on every
    /// replica it is tried on.
    async fn send(&self, request: MetaRequest, unbounded: bool) -> Result<MetaReply> {
        if follows_batches(&request)
            && let Some(barrier) = self.barrier.get().and_then(std::sync::Weak::upgrade)
        {
            barrier.passed().await?;
        }
        let ticket = self.ticket();
        let timeout = (!unbounded).then(|| self.rpc.request_timeout());
        self.send_numbered(&ticket, request, timeout).await
    }

    /// A number for a request, kept until the ticket is dropped.
    pub fn ticket(&self) -> Ticket<'_> {
        let seq = self.session.as_ref().map(|_| self.numbers.take());
        Ticket(Waiting(&self.numbers, seq))
    }

    async fn send_numbered(
        &self,
        ticket: &Ticket<'_>,
        request: MetaRequest,
        timeout: Option<Duration>,
    ) -> Result<MetaReply> {
        if self.shut.load(Ordering::SeqCst) {
            return Err(MetaClientError::ShutDown);
        }
        let seq = ticket.0.1;
        let envelope = Envelope { seq, request };
        let sent = Instant::now();
        let response: MetaResponse = self.rpc.call_within(&envelope, timeout, not_leader).await?;
        let mut confirmed = self.confirmed.locked();
        *confirmed = Some(confirmed.map_or(sent, |at| at.max(sent)));
        drop(confirmed);
        Ok(response?)
    }

    /// When the latest request that metad answered was sent. A replica of a group answers
    /// only once a quorum has confirmed it leads, after the request arrived; so what it
    /// granted with any answer (leases) holds from then at least until another replica
    /// could be elected, which the group's leader lease puts 0.9 s after that confirmation.
    pub fn confirmed_at(&self) -> Option<Instant> {
        *self.confirmed.locked()
    }

    pub async fn volume(&self) -> Result<VolumeInfo> {
        call!(self, VolumeRequest::Volume, "volume", MetaReply::Volume(v) => v)
    }

    pub async fn lookup(&self, parent: Ino, name: &[u8], cred: &Cred) -> Result<Attr> {
        let request = NameRequest::Lookup { parent, name: name.to_vec(), cred: cred.clone() };
        call!(self, request, "lookup", MetaReply::Attr(a) => a)
    }

    pub async fn get_attr(&self, ino: Ino) -> Result<Attr> {
        call!(self, AttrRequest::GetAttr { ino }, "getattr", MetaReply::Attr(a) => a)
    }

    pub async fn set_attr(&self, ino: Ino, cred: Cred, changes: SetAttr) -> Result<Attr> {
        let request = AttrRequest::SetAttr { ino, cred, changes };
        call!(self, request, "setattr", MetaReply::Attr(a) => a)
    }

    pub async fn set_flags(&self, ino: Ino, cred: Cred, change: FlagChange) -> Result<Attr> {
        let request = AttrRequest::SetFlags { ino, cred, change };
        call!(self, request, "setflags", MetaReply::Attr(a) => a)
    }

    pub async fn make_node(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        cred: Cred,
    ) -> Result<Made> {
        let request = NameRequest::MakeNode { parent, name: name.to_vec(), mode, rdev, cred };
        call!(self, request, "mknod", MetaReply::Made(m) => m)
    }

    pub async fn make_dir(&self, parent: Ino, name: &[u8], mode: u32, cred: Cred) -> Result<Made> {
        let request = NameRequest::MakeDir { parent, name: name.to_vec(), mode, cred };
        call!(self, request, "mkdir", MetaReply::Made(m) => m)
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        cred: Cred,
    ) -> Result<Made> {
        let request =
            NameRequest::Symlink { parent, name: name.to_vec(), target: target.to_vec(), cred };
        call!(self, request, "symlink", MetaReply::Made(m) => m)
    }

    pub async fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        call!(self, NameRequest::ReadLink { ino }, "readlink", MetaReply::Target(t) => t)
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8], cred: &Cred) -> Result<Unlinked> {
        let request = NameRequest::Unlink { parent, name: name.to_vec(), cred: cred.clone() };
        call!(self, request, "unlink", MetaReply::Unlinked(u) => u)
    }

    pub async fn remove_dir(&self, parent: Ino, name: &[u8], cred: &Cred) -> Result<()> {
        let request = NameRequest::RemoveDir { parent, name: name.to_vec(), cred: cred.clone() };
        call!(self, request, "rmdir", MetaReply::Done => ())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
        cred: &Cred,
    ) -> Result<Option<Ino>> {
        let request = NameRequest::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            mode,
            cred: cred.clone(),
        };
        call!(self, request, "rename", MetaReply::Renamed { replaced } => replaced)
    }

    pub async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        cred: &Cred,
    ) -> Result<Made> {
        let new_name = new_name.to_vec();
        let request = NameRequest::Link { ino, new_parent, new_name, cred: cred.clone() };
        call!(self, request, "link", MetaReply::Made(m) => m)
    }

    /// `(the directory's parent, entries after cookie `after`)`.
    pub async fn read_dir(
        &self,
        ino: Ino,
        after: u64,
        limit: u32,
        cred: &Cred,
    ) -> Result<(Ino, Vec<DirEntry>)> {
        let request = NameRequest::ReadDir { ino, after, limit, cred: cred.clone() };
        call!(self, request, "readdir", MetaReply::Entries { parent, entries } => (parent, entries))
    }

    pub async fn layout(&self, ino: Ino) -> Result<Layout> {
        call!(self, DataRequest::GetLayout { ino }, "layout", MetaReply::Layout(l) => l)
    }

    /// Takes the exclusive lease on file `ino` (see [`SessionRequest::WriteLease`]).
    pub async fn write_lease(&self, ino: Ino) -> Result<Attr> {
        call!(self, SessionRequest::WriteLease { ino }, "write lease", MetaReply::Attr(a) => a)
    }

    /// Gives back the lease on `ino` a recall with `seq` asked for.
    pub async fn release_lease(&self, ino: Ino, seq: u64) -> Result<()> {
        call!(self, SessionRequest::ReleaseLease { ino, seq }, "release lease", MetaReply::Done => ())
    }

    pub async fn open_file(&self, ino: Ino) -> Result<Attr> {
        call!(self, SessionRequest::OpenFile { ino }, "open", MetaReply::Attr(a) => a)
    }

    pub async fn release_file(&self, ino: Ino) -> Result<()> {
        call!(self, SessionRequest::ReleaseFile { ino }, "release", MetaReply::Done => ())
    }

    pub async fn allocate(&self, ino: Ino, offset: u64, len: u64, op: SpaceOp) -> Result<Attr> {
        let request = DataRequest::Allocate { ino, offset, len, op };
        call!(self, request, "fallocate", MetaReply::Attr(a) => a)
    }

    /// Returns the destination's attributes and the bytes copied.
    pub async fn clone_range(
        &self,
        src: Ino,
        src_offset: u64,
        dst: Ino,
        dst_offset: u64,
        len: u64,
    ) -> Result<(Attr, u64)> {
        let request = DataRequest::CloneRange { src, src_offset, dst, dst_offset, len };
        call!(self, request, "copy_file_range", MetaReply::Cloned { attr, len } => (attr, len))
    }

    pub async fn test_lock(
        &self,
        ino: Ino,
        owner: u64,
        (start, end): (u64, u64),
        kind: LockKind,
    ) -> Result<Option<HeldLock>> {
        let request = LockRequest::TestLock { ino, owner, start, end, kind };
        call!(self, request, "getlk", MetaReply::Lock(l) => l)
    }

    /// With `wait`, waits as long as the lock is held elsewhere (F_SETLKW).
    pub async fn set_lock(&self, ino: Ino, owner: u64, lock: HeldLock, wait: bool) -> Result<()> {
        let request = MetaRequest::from(LockRequest::SetLock { ino, owner, lock, wait });
        match self.send(request, wait).await? {
            MetaReply::Done => Ok(()),
            _ => Err(MetaClientError::UnexpectedReply("setlk")),
        }
    }

    pub async fn unlock(&self, ino: Ino, owner: u64, (start, end): (u64, u64)) -> Result<()> {
        let request = LockRequest::Unlock { ino, owner, start, end };
        call!(self, request, "unlock", MetaReply::Done => ())
    }

    /// Answers the attributes with the atime as it now is.
    pub async fn accessed(&self, ino: Ino, strict: bool) -> Result<Attr> {
        call!(self, AttrRequest::Accessed { ino, strict }, "accessed", MetaReply::Attr(a) => a)
    }

    /// Updates the atime of the files read in `accesses`, each to the time of its read.
    pub async fn accessed_at(&self, accesses: Vec<Access>, strict: bool) -> Result<()> {
        let request = AttrRequest::AccessedAt { accesses, strict };
        call!(self, request, "accessed at", MetaReply::Done => ())
    }

    /// Reserves `count` inode numbers and readdir cookies: answers the first of each.
    pub async fn reserve_inos(&self, count: u32) -> Result<(Ino, u64)> {
        let request = SessionRequest::ReserveInos { count };
        call!(self, request, "reserve inode numbers",
            MetaReply::Inos { first, first_cookie, .. } => (first, first_cookie))
    }

    /// Applies `changes` in order, stopping at the first that fails: how many were
    /// applied, and the error of the one that failed. Sent with `ticket`'s number, so a
    /// batch sent again with the same ticket after a failed try is applied once.
    pub async fn batch(
        &self,
        ticket: &Ticket<'_>,
        changes: Vec<Queued>,
        leases_of: u64,
    ) -> Result<(u32, Option<MetaError>)> {
        let request = BatchRequest::Batch { changes, leases_of }.into();
        match self.send_numbered(ticket, request, Some(self.rpc.request_timeout())).await? {
            MetaReply::Batched { applied, failed, .. } => Ok((applied, failed)),
            _ => Err(MetaClientError::UnexpectedReply("batch")),
        }
    }

    pub async fn fsck(&self, repair: bool) -> Result<FsckReport> {
        call!(self, VolumeRequest::Fsck { repair }, "fsck", MetaReply::Fsck(r) => r)
    }

    pub async fn list_chunks(
        &self,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<Vec<ChunkLocation>> {
        let request = CatalogueRequest::ListChunks { after, limit };
        call!(self, request, "list chunks", MetaReply::Chunks(c) => c)
    }

    pub async fn workers(&self) -> Result<WorkerStatus> {
        call!(self, VolumeRequest::Workers, "workers", MetaReply::Workers(w) => w)
    }

    /// Dedup and placement for `chunks`, placing nothing on the chunkds in `avoid`.
    pub async fn prepare_write(
        &self,
        ino: Ino,
        chunks: Vec<ChunkToWrite>,
        avoid: Vec<String>,
    ) -> Result<Vec<ChunkPlan>> {
        let request = DataRequest::PrepareWrite { ino, chunks, avoid };
        call!(self, request, "prepare write", MetaReply::Plans(p) => p)
    }

    pub async fn commit_write(
        &self,
        ino: Ino,
        stored: Vec<StoredChunk>,
        inline: Vec<InlineChunk>,
        extents: Vec<Extent>,
        mtime: Timestamp,
    ) -> Result<Attr> {
        let request = DataRequest::CommitWrite { ino, stored, inline, extents, mtime };
        call!(self, request, "commit write", MetaReply::Attr(a) => a)
    }

    /// The content of a chunk kept inline in metad.
    pub async fn read_inline(&self, chunk: ChunkId) -> Result<Vec<u8>> {
        let request = DataRequest::ReadInline { chunk };
        call!(self, request, "read inline chunk", MetaReply::Data(d) => d)
    }

    pub async fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        cred: &Cred,
    ) -> Result<Attr> {
        let (name, value) = (name.to_vec(), value.to_vec());
        let request = XattrRequest::SetXattr { ino, name, value, mode, cred: cred.clone() };
        call!(self, request, "setxattr", MetaReply::Attr(a) => a)
    }

    pub async fn get_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> Result<Vec<u8>> {
        let request = XattrRequest::GetXattr { ino, name: name.to_vec(), cred: cred.clone() };
        call!(self, request, "getxattr", MetaReply::Xattr(v) => v)
    }

    pub async fn list_xattr(&self, ino: Ino, cred: &Cred) -> Result<Vec<Vec<u8>>> {
        let request = XattrRequest::ListXattr { ino, cred: cred.clone() };
        call!(self, request, "listxattr", MetaReply::XattrNames(n) => n)
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8], cred: &Cred) -> Result<Attr> {
        let request = XattrRequest::RemoveXattr { ino, name: name.to_vec(), cred: cred.clone() };
        call!(self, request, "removexattr", MetaReply::Attr(a) => a)
    }

    pub async fn stat_fs(&self) -> Result<StatFs> {
        call!(self, VolumeRequest::StatFs, "statfs", MetaReply::StatFs(s) => s)
    }

    pub async fn report_bad_shard(&self, shard: ShardId, chunkd: String) -> Result<()> {
        let request = CatalogueRequest::ReportBadShard { shard, chunkd };
        call!(self, request, "report bad shard", MetaReply::Done => ())
    }

    /// Starts a garbage-collection pass now; answers the `gc_passes` count at which it has
    /// ended.
    pub async fn collect(&self) -> Result<u64> {
        call!(self, CatalogueRequest::Collect, "collect", MetaReply::Collecting { done_after } => done_after)
    }

    /// Starts (or with `undo`, stops) draining `chunkd`; answers how many shards the
    /// catalogue still places on it.
    pub async fn drain(&self, chunkd: &str, undo: bool) -> Result<u64> {
        let request = MemberRequest::Drain { chunkd: chunkd.to_owned(), undo };
        call!(self, request, "drain", MetaReply::Drained { remaining } => remaining)
    }

    pub async fn forget(&self, chunkd: &str) -> Result<()> {
        let request = MemberRequest::Forget { chunkd: chunkd.to_owned() };
        call!(self, request, "forget", MetaReply::Done => ())
    }

    pub async fn chunkds(&self) -> Result<Vec<ChunkdStatus>> {
        call!(self, MemberRequest::Chunkds, "chunkds", MetaReply::Chunkds(c) => c)
    }

    pub async fn chunk_status(&self, chunk: ChunkId) -> Result<Option<ChunkStatus>> {
        let request = CatalogueRequest::ChunkStatus { chunk };
        call!(self, request, "chunk status", MetaReply::ChunkStatus(s) => s)
    }

    pub async fn catalogue_stats(&self) -> Result<CatalogueStats> {
        call!(self, CatalogueRequest::CatalogueStats, "catalogue stats", MetaReply::CatalogueStats(s) => s)
    }
}
