//! Namespace changes this mount answered itself, on their way to metad.
//!
//! Under a directory's write lease the mount answers creates and removals there itself
//! (`core/names.rs`) and queues each change here; a sender task sends the queue to metad in
//! ordered batches (`Batch`: one request, one transaction, one log entry on a replica
//! group), one batch at a time, the oldest changes first. A batch is sent again after a
//! failed try with the same request number, so metad applies it once. Any other request to
//! metad waits until the changes queued before it are applied (the client's [`Barrier`]),
//! so metad sees this mount's changes and requests in the order the mount made them.
//!
//! metad applies a batch in order and stops at the first change that fails, so it never
//! holds a later change without the earlier ones. A change it refuses means the mount's
//! view and metad's disagree: the refused change and every change queued after it are
//! dropped, what the mount caches under its leases is dropped with them ([`Leases::reset`]),
//! and the error is reported by the next `fsync` or `syncfs`, as a local filesystem reports
//! a failed delayed allocation.
//!
//! New inodes are numbered from blocks metad reserved for the session (`ReserveInos`),
//! taken in queue order, as metad requires.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardfs_meta_api::proto::{
    DataRequest, Ino, MAX_BATCH, MetaError, MetaRequest, NameRequest, Queued,
};
use shardfs_meta_api::{Barrier, MetaClient, MetaClientError};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::error::{FsError, FsResult};
use crate::leases::{Leases, Named};
use shardfs_rpc::sync::Lock as _;

/// Most changes waiting at once; past it the mount sends its changes itself, one by one,
/// after those queued.
const MAX_QUEUED: usize = 16_384;

/// How long the sender lets changes gather before it sends them, unless someone waits.
const GATHER: Duration = Duration::from_millis(2);

/// Inode numbers asked for at a time, and how few left start asking for more.
const RESERVE: u32 = 4096;
const LOW: u64 = 1024;

/// First wait before a failed batch is sent again; doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

pub struct Journal {
    me: std::sync::Weak<Journal>,
    state: Mutex<State>,
    /// Wakes the sender.
    wake: Notify,
    /// Set by those waiting for the queue to be sent: no gathering then.
    urgent: AtomicBool,
    /// How many changes were answered (applied, or dropped after a refusal) in all.
    answered: watch::Sender<u64>,
    meta: Arc<MetaClient>,
    leases: Arc<Leases>,
    /// Whether a reservation of inode numbers is on its way.
    reserving: AtomicBool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Entry>,
    /// How many changes were queued in all (the last one's position).
    queued: u64,
    /// Inode numbers reserved and not used yet, in order.
    inos: VecDeque<Reserved>,
    /// A refusal not reported yet.
    refused: Option<MetaError>,
    /// The position (in `queued`) of the last change queued that touches each inode, while
    /// changes wait.
    touched: HashMap<Ino, u64>,
}

/// A change waiting, with the incarnation of the metad whose leases it was made under.
#[derive(Clone)]
struct Entry {
    change: Queued,
    leases_of: u64,
}

/// A block of inode numbers metad reserved, with the readdir cookies of the names made
/// for them.
struct Reserved {
    inos: std::ops::Range<Ino>,
    /// The cookie of the name made for inode `inos.start`.
    cookie: u64,
}

impl State {
    fn touch(&mut self, inos: &[Ino]) {
        for &ino in inos {
            self.touched.insert(ino, self.queued);
        }
    }
}

impl Journal {
    /// A journal sending through `meta`, which waits for it before other requests.
    pub fn start(meta: Arc<MetaClient>, leases: Arc<Leases>) -> Arc<Journal> {
        let journal = Arc::new_cyclic(|me| Journal {
            me: me.clone(),
            state: Mutex::default(),
            wake: Notify::new(),
            urgent: AtomicBool::new(false),
            answered: watch::Sender::new(0),
            meta,
            leases,
            reserving: AtomicBool::new(false),
        });
        let barrier: Arc<dyn Barrier> = journal.clone();
        journal.meta.set_barrier(Arc::downgrade(&barrier));
        journal.reserve();
        tokio::spawn(send_batches(Arc::downgrade(&journal)));
        journal
    }

    /// Queues `change`, which changes `touches` (what metad checks leases on); false if the
    /// queue is full (the caller sends it itself).
    pub fn push(&self, change: Queued, touches: &[Ino]) -> bool {
        let mut state = self.state.locked();
        if state.queue.len() >= MAX_QUEUED {
            return false;
        }
        let leases_of = self.leases.incarnation();
        state.queue.push_back(Entry { change, leases_of });
        state.queued += 1;
        state.touch(touches);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Numbers a new inode and queues the change that makes it in directory `parent`,
    /// `make(ino)`, in one step: numbers reach metad in the order it requires. Answers the
    /// number with the readdir cookie its name takes; `None` when no number or no room is
    /// left (the caller sends the change itself).
    pub fn push_made(&self, parent: Ino, make: impl FnOnce(Ino) -> Queued) -> Option<Named> {
        let mut state = self.state.locked();
        if state.queue.len() >= MAX_QUEUED {
            return None;
        }
        let block = state.inos.front_mut()?;
        let named = Named { ino: block.inos.start, cookie: block.cookie };
        let ino = named.ino;
        block.inos.start += 1;
        block.cookie += 1;
        if block.inos.is_empty() {
            state.inos.pop_front();
        }
        let left: u64 = state.inos.iter().map(|b| b.inos.end - b.inos.start).sum();
        let leases_of = self.leases.incarnation();
        state.queue.push_back(Entry { change: make(ino), leases_of });
        state.queued += 1;
        state.touch(&[parent, ino]);
        drop(state);
        if left < LOW {
            self.reserve();
        }
        self.wake.notify_one();
        Some(named)
    }

    /// Asks metad for more inode numbers, in the background, unless a request is on its way.
    fn reserve(&self) {
        if self.reserving.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let Some(journal) = me.upgrade() else { return };
            match journal.meta.reserve_inos(RESERVE).await {
                Ok((first, cookie)) => {
                    let block = Reserved { inos: first..first + u64::from(RESERVE), cookie };
                    journal.state.locked().inos.push_back(block);
                }
                // Changes are sent one by one meanwhile; the next create asks again.
                Err(e) => debug!("cannot reserve inode numbers: {e}"),
            }
            journal.reserving.store(false, Ordering::SeqCst);
        });
    }

    /// Waits until every change queued so far is answered; fails if they could not be sent
    /// in a request's time, or with a refusal not reported yet.
    pub async fn flush(&self) -> FsResult<()> {
        self.sent().await?;
        match self.state.locked().refused.take() {
            Some(e) => Err(FsError::Refused(e)),
            None => Ok(()),
        }
    }

    /// Waits until the changes queued so far that touch `ino`, and those before them, are
    /// answered: what a recall of the lease on `ino` waits for before the lease goes back.
    /// Only the changes of inodes this mount holds write leases on are queued, and no
    /// other mount can hold those, so a recall of any other lease waits for nothing here:
    /// two mounts never wait on each other's queues.
    pub async fn sent_for(&self, ino: Ino) -> Result<(), MetaClientError> {
        let target = self.state.locked().touched.get(&ino).copied();
        match target {
            Some(target) => self.wait_answered(target).await,
            None => Ok(()),
        }
    }

    /// Waits until every change queued so far is answered (applied, or dropped after a
    /// refusal); fails if they could not be sent in a request's time.
    pub async fn sent(&self) -> Result<(), MetaClientError> {
        let target = self.state.locked().queued;
        self.wait_answered(target).await
    }
}

impl Barrier for Journal {
    fn passed(&self) -> Pin<Box<dyn Future<Output = Result<(), MetaClientError>> + Send + '_>> {
        Box::pin(self.sent())
    }
}

/// Sends the queue in batches, one at a time, until the journal is dropped.
async fn send_batches(journal: std::sync::Weak<Journal>) {
    loop {
        let Some(me) = journal.upgrade() else { return };
        let woken = me.wake.notified();
        if me.state.locked().queue.is_empty() {
            // Woken at least once a second to notice the journal going away.
            let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
            continue;
        }
        drop(woken);
        if !me.urgent.swap(false, Ordering::SeqCst) {
            tokio::time::sleep(GATHER).await;
        }
        me.send_one().await;
    }
}

impl Journal {
    /// Sends the oldest queued changes (as many as a batch takes) until metad answers, and
    /// takes what it applied off the queue.
    async fn send_one(&self) {
        // The batch goes as made under the leases of its oldest change.
        let (changes, leases_of) = {
            let state = self.state.locked();
            let mut bytes = 0;
            let changes: Vec<Queued> = (state.queue.iter())
                .take(MAX_BATCH)
                .take_while(|entry| {
                    bytes += size(&entry.change);
                    bytes <= MAX_BATCH_BYTES || bytes == size(&entry.change)
                })
                .map(|entry| entry.change.clone())
                .collect();
            (changes, state.queue.front().map_or(0, |entry| entry.leases_of))
        };
        let ticket = self.meta.ticket();
        let mut delay = FIRST_RETRY;
        let answer = loop {
            match self.meta.batch(&ticket, changes.clone(), leases_of).await {
                Ok(answer) => break answer,
                // The whole request was refused: nothing of it was applied.
                Err(MetaClientError::Meta(e)) if !transient(&e) => break (0, Some(e)),
                // Nothing more is sent: the mount was shut down, and its queue dropped.
                Err(MetaClientError::ShutDown) => return,
                Err(e) => {
                    warn!(
                        changes = changes.len(),
                        "batch of changes not sent, trying again in {delay:?}: {e}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        };
        drop(ticket);
        let (applied, refused) = answer;
        let mut state = self.state.locked();
        let applied = (applied as usize).min(state.queue.len());
        state.queue.drain(..applied);
        if state.queue.is_empty() {
            state.touched.clear();
        }
        drop(state);
        let mut answered = applied as u64;
        if let Some(e) = refused {
            // The lease table is locked first, as where changes are queued.
            let dropped = self.leases.reset(|| self.drop_queued(Some(e.clone())));
            self.reserve();
            let change = changes.get(applied).map(|q| describe(&q.request)).unwrap_or_default();
            warn!(
                dropped,
                "metad refused a change this mount had answered itself, {change}: {e}; it and \
                 the changes made after it are dropped, with what the mount caches"
            );
            answered += dropped;
        }
        self.answered.send_modify(|n| *n += answered);
    }

    /// Drops every change waiting (counted as answered by the caller), with the inode
    /// numbers reserved (the session may be a new one, which owns none of them); a refusal
    /// is kept for the next flush to report. Answers how many were dropped.
    fn drop_queued(&self, refused: Option<MetaError>) -> u64 {
        let mut state = self.state.locked();
        let dropped = state.queue.len() as u64;
        state.queue.clear();
        state.touched.clear();
        if let Some(e) = refused {
            state.refused.get_or_insert(e);
        }
        state.inos.clear();
        dropped
    }

    /// Drops every change waiting, unsent, and what the mount caches under its leases (a
    /// mount shut down without flushing its log). Batches already on their way may still
    /// land. Answers how many were dropped.
    pub fn discard(&self) -> u64 {
        let dropped = self.leases.reset(|| self.drop_queued(None));
        self.answered.send_modify(|n| *n += dropped);
        dropped
    }

    /// Waits until `target` changes in all are answered, at most a request's time. Most
    /// callers find them answered: no subscription, no wake-up of the sender.
    async fn wait_answered(&self, target: u64) -> Result<(), MetaClientError> {
        let done = *self.answered.borrow() >= target;
        if done {
            return Ok(());
        }
        let mut answered = self.answered.subscribe();
        self.urgent.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let limit = self.meta.options().request_timeout;
        match tokio::time::timeout(limit, answered.wait_for(|&n| n >= target)).await {
            Ok(_) => Ok(()),
            Err(_) => {
                Err(MetaError::Unavailable("changes not sent to metad in time".into()).into())
            }
        }
    }
}

/// Most bytes of changes (small files' content, mostly) one batch carries, well within a
/// frame.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// About how many bytes `change` takes in a batch.
fn size(change: &Queued) -> usize {
    let content = match &change.request {
        MetaRequest::Data(DataRequest::CommitWrite { inline, .. }) => {
            inline.iter().map(|chunk| chunk.data.len()).sum()
        }
        _ => 0,
    };
    512 + content
}

/// A queued change as the log names it: the operation, and the inode or name it is about.
fn describe(request: &MetaRequest) -> String {
    let op = request.op();
    match request {
        MetaRequest::Names(
            NameRequest::MakeNode { parent, name, .. }
            | NameRequest::MakeDir { parent, name, .. }
            | NameRequest::Unlink { parent, name, .. }
            | NameRequest::RemoveDir { parent, name, .. },
        ) => format!("{op} of {:?} in directory {parent}", String::from_utf8_lossy(name)),
        MetaRequest::Data(DataRequest::CommitWrite { ino, .. }) => format!("{op} of inode {ino}"),
        _ => op.to_string(),
    }
}

/// Whether a batch refused with `e` as a whole may be sent again.
fn transient(e: &MetaError) -> bool {
    matches!(e, MetaError::Unavailable(_) | MetaError::NotLeader(_) | MetaError::SessionExpired)
}
