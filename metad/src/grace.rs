//! The grace period of a metad that took over: a new leader, or a restart.
//!
//! Leases live in the memory of the metad that granted them, and a mount answers changes
//! under its write leases before it sends them (`BatchRequest`). When another metad takes
//! over, it knows none of those leases, yet the mounts whose sessions it took up may still
//! hold changes made under them. Until each of those mounts has sent them and said so
//! (`ReclaimDone`), or [`RECLAIM_GRACE`] has passed, the new metad answers nothing else
//! (other than session upkeep, and those mounts' own commits): no other mount can read or
//! change what they covered first. Changes made under the old leases that arrive later are
//! refused (`LeasesLost`), as NFSv4 servers refuse reclaims after their grace period.
//!
//! Each metad names itself with an incarnation, told to mounts when their sessions open, so
//! a batch says whose leases it was made under.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use shardfs_meta_api::proto::{
    BatchRequest, DataRequest, MetaRequest, RECLAIM_GRACE, SessionRequest,
};
use shardfs_rpc::sync::Lock as _;
use tracing::info;

use crate::store::Holder;

pub struct Grace {
    incarnation: u64,
    /// When the grace period ends at the latest.
    until: Instant,
    /// The sessions taken up that have not said they are done.
    waiting: Mutex<HashSet<Holder>>,
    /// Set once the grace period is over.
    over: tokio::sync::watch::Sender<bool>,
}

impl Grace {
    /// The grace period of a metad that took up `sessions` from an earlier one: none if it
    /// took up none.
    pub fn new(sessions: impl IntoIterator<Item = Holder>) -> Grace {
        let waiting: HashSet<Holder> = sessions.into_iter().collect();
        let over = tokio::sync::watch::Sender::new(waiting.is_empty());
        // Unique across restarts and leaders: the clock, as session ids are seeded.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        if !waiting.is_empty() {
            info!(
                sessions = waiting.len(),
                "waiting for mounts to send changes made under leases before the takeover"
            );
        }
        Grace {
            incarnation,
            until: Instant::now() + RECLAIM_GRACE,
            waiting: Mutex::new(waiting),
            over,
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn is_over(&self) -> bool {
        if *self.over.borrow() {
            return true;
        }
        if Instant::now() >= self.until {
            let late = self.waiting.locked().len();
            if self.over.send_if_modified(|over| !std::mem::replace(over, true)) {
                info!(
                    late,
                    "grace period over: changes still to come from before the takeover will be refused"
                );
            }
            return true;
        }
        false
    }

    /// Whether `holder` may still send changes made under the old metad's leases.
    pub fn reclaiming(&self, holder: Holder) -> bool {
        !self.is_over() && self.waiting.locked().contains(&holder)
    }

    /// `holder` has sent what it changed under the old leases.
    pub fn done(&self, holder: Holder) {
        let mut waiting = self.waiting.locked();
        if waiting.remove(&holder) && waiting.is_empty() {
            drop(waiting);
            if self.over.send_if_modified(|over| !std::mem::replace(over, true)) {
                info!("grace period over: every mount sent its changes from before the takeover");
            }
        }
    }

    /// Waits, unless the grace period is over or `request` from `holder` may go on in it.
    pub async fn admit(&self, holder: Holder, request: &MetaRequest) {
        if self.is_over() || admitted(request, self.reclaiming(holder)) {
            return;
        }
        let mut over = self.over.subscribe();
        let deadline = tokio::time::Instant::from_std(self.until);
        let _ = tokio::time::timeout_at(deadline, over.wait_for(|over| *over)).await;
    }
}

/// Whether `request` goes on during the grace period: session upkeep from anyone, and from
/// a mount still reclaiming, the commits of what it changed under the old leases (its
/// batches, and the writes it buffered, with the layouts and content a partial chunk is
/// completed from). Everything else waits.
fn admitted(request: &MetaRequest, reclaiming: bool) -> bool {
    match request {
        MetaRequest::Sessions(
            SessionRequest::OpenSession { .. }
            | SessionRequest::Heartbeat
            | SessionRequest::CloseSession
            | SessionRequest::ReleaseLease { .. }
            | SessionRequest::ReclaimDone,
        ) => true,
        MetaRequest::Batches(BatchRequest::Batch { .. })
        | MetaRequest::Sessions(SessionRequest::ReserveInos { .. })
        | MetaRequest::Data(
            DataRequest::PrepareWrite { .. }
            | DataRequest::CommitWrite { .. }
            | DataRequest::GetLayout { .. }
            | DataRequest::ReadInline { .. },
        ) => reclaiming,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_grace_period_ends_when_every_session_is_done() {
        let grace = Grace::new([3, 5]);
        assert!(grace.reclaiming(3) && grace.reclaiming(5) && !grace.reclaiming(7));
        let open = MetaRequest::Sessions(SessionRequest::OpenFile { ino: 1 });
        let waits =
            || tokio::time::timeout(std::time::Duration::from_millis(50), grace.admit(7, &open));
        assert!(waits().await.is_err(), "a request of another session waits");
        grace.done(3);
        assert!(waits().await.is_err(), "one session is still reclaiming");
        assert!(!grace.reclaiming(3), "done is done");
        grace.done(5);
        assert!(waits().await.is_ok(), "every session is done");
        assert!(!grace.reclaiming(5));
        assert!(Grace::new([]).is_over(), "nothing to wait for");
    }

    #[test]
    fn reclaiming_sessions_commit_but_read_nothing() {
        let batch = MetaRequest::Batches(BatchRequest::Batch { changes: vec![], leases_of: 1 });
        let open = MetaRequest::Sessions(SessionRequest::OpenFile { ino: 1 });
        assert!(admitted(&batch, true) && !admitted(&batch, false));
        assert!(!admitted(&open, true));
        assert!(admitted(&MetaRequest::Sessions(SessionRequest::Heartbeat), false));
    }
}
