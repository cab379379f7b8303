//! How long this mount trusts its leases, and what it does when another metad takes over.
//!
//! A leader cut off from its group (frozen, or on the wrong side of a partition) answers
//! nothing, but a mount that asks it nothing would go on serving what its leases let it and
//! the kernel cache, while another replica, elected meanwhile, lets other mounts change it.
//! A leader answers only after a quorum confirmed its lead, which happened after the request
//! arrived; and no other replica can be elected until the leader lease of that quorum runs
//! out, 0.9 s after it confirmed (openraft refuses votes meanwhile). So the leases this
//! mount holds are sure for 0.9 s from when the latest answered request was sent. The mount
//! trusts its read leases for less ([`LEASE_TRUST`]), asks metad when nothing else did, and
//! past it drops them and the kernel's caches, and asks again, as it does when its
//! connection to metad is lost.
//!
//! Write leases cover what this mount changed and has not sent yet. A metad that takes over
//! (a new leader, or a restart) waits up to [`RECLAIM_GRACE`] for the mounts whose sessions
//! it took up to send those changes before it answers any other mount (`metad/src/grace.rs`),
//! so they stay this mount's for that long after the latest answered request was sent: the
//! mount serves from them until then, and drops them past it. When its session resumes on
//! a new metad, the mount sends what it changed and buffered ([`Fs::reclaim`]) and says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use shardfs_meta_api::proto::RECLAIM_GRACE;
use tracing::{debug, info, warn};

use super::Fs;

/// How long after the latest answered request was sent the read leases are trusted (with
/// metad as a group of replicas): well inside the group's 0.9 s leader lease, with room for
/// the check interval and the invalidation.
const LEASE_TRUST: Duration = Duration::from_millis(500);

/// How often the trust is checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// How long a heartbeat asking whether the leader still leads waits for one replica before
/// looking for the leader elsewhere: short beside the grace period, long beside an answer.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(2);

/// Keeps the leases trusted while metad answers, and stops trusting them when it does not,
/// until the client is dropped. With one metad, only a lost connection makes the mount ask:
/// nobody else can take over while it stands.
pub(super) async fn keep_leases_trusted(fs: Weak<Fs>) {
    let asking = Arc::new(AtomicBool::new(false));
    let mut writes_dropped = false;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(fs) = fs.upgrade() else { return };
        // Nothing answered yet: nothing granted either.
        let Some(age) = fs.meta.confirmed_at().map(|at| at.elapsed()) else { continue };
        let group = fs.meta.replicas().len() > 1;
        let unsure = group || fs.leases.disconnected();
        if group && age > LEASE_TRUST {
            fs.leases.distrust();
        }
        if unsure && age > RECLAIM_GRACE {
            if !writes_dropped {
                warn!("metad has not answered for {age:?}: changes made here wait for it");
                fs.leases.distrust_all();
            }
            writes_dropped = true;
        } else {
            writes_dropped = false;
        }
        // Asked before the trust runs out, when nothing else asked metad since.
        if unsure && age > LEASE_TRUST / 2 && !asking.swap(true, Ordering::SeqCst) {
            let (meta, asking) = (fs.meta.clone(), asking.clone());
            tokio::spawn(async move {
                if let Err(e) = meta.heartbeat_within(HEARTBEAT_WAIT).await {
                    debug!("metad did not confirm the leases: {e}");
                }
                asking.store(false, Ordering::SeqCst);
            });
        }
    }
}

/// Sends what this mount changed under a metad's leases to the one that took over from
/// it, each time one does, until the client is dropped.
pub(super) async fn reclaim_after_takeovers(fs: Weak<Fs>) {
    let Some(mut incarnations) = fs.upgrade().map(|fs| fs.leases.incarnations()) else { return };
    let mut known = *incarnations.borrow_and_update();
    loop {
        // Woken at least once a second to notice the client going away.
        let changed = tokio::time::timeout(Duration::from_secs(1), incarnations.changed()).await;
        let Some(fs) = fs.upgrade() else { return };
        if !matches!(changed, Ok(Ok(()))) {
            continue;
        }
        let now = *incarnations.borrow_and_update();
        if known != 0 && now != known {
            fs.reclaim().await;
        }
        known = now;
    }
}

impl Fs {
    /// Commits what this mount changed and buffered under the leases of a metad that
    /// another took over from, then tells the new one, which lets other mounts in.
    async fn reclaim(&self) {
        info!("metad changed hands: sending what this mount changed under the old leases");
        // Files closed and still committing included. One busy with another operation (which
        // may itself wait for the grace period to end) is left to it.
        // A failure is logged; the file's next flush or fsync reports it.
        let _ = self.commit_open_files("after a metad takeover", false).await;
        if let Err(e) = self.flush_journal_sent().await {
            warn!("changes answered here not sent in the grace period: {e}");
        }
        if let Err(e) = self.meta.reclaim_done().await {
            debug!("cannot tell metad the changes are sent: {e}");
        }
    }
}
