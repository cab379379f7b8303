//! How long this mount trusts its leases when metad is a group of replicas.
//!
//! A leader cut off from its group (frozen, or on the wrong side of a partition) answers
//! nothing, but a mount that asks it nothing would go on serving what its leases let it and
//! the kernel cache, while another replica, elected meanwhile, lets other mounts change it.
//! A leader answers only after a quorum confirmed its lead, which happened after the request
//! arrived; and no other replica can be elected until the leader lease of that quorum runs
//! out, 0.9 s after it confirmed (openraft refuses votes meanwhile). So the leases this
//! mount holds are sure for 0.9 s from when the latest answered request was sent. The mount
//! trusts them for less ([`LEASE_TRUST`]), asks metad when nothing else did, and past it
//! drops its read leases and the kernel's caches, and asks again, as it does when its
//! connection to metad is lost. Write leases are kept: what they buffer is this mount's own
//! writes, which still have to be committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::debug;

use super::Fs;

/// How long after the latest answered request was sent the leases are trusted: well inside
/// the group's 0.9 s leader lease, with room for the check interval and the invalidation.
const LEASE_TRUST: Duration = Duration::from_millis(500);

/// How often the trust is checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Keeps the leases trusted while metad's leader answers, and stops trusting them when it
/// does not, until the client is dropped.
pub(super) async fn keep_leases_trusted(fs: Weak<Fs>) {
    let asking = Arc::new(AtomicBool::new(false));
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(fs) = fs.upgrade() else { return };
        // Nothing answered yet: nothing granted either.
        let Some(age) = fs.meta.confirmed_at().map(|at| at.elapsed()) else { continue };
        if age > LEASE_TRUST {
            fs.leases.distrust();
        }
        // Asked before the trust runs out, when nothing else asked metad since.
        if age > LEASE_TRUST / 2 && !asking.swap(true, Ordering::SeqCst) {
            let (meta, asking) = (fs.meta.clone(), asking.clone());
            tokio::spawn(async move {
                if let Err(e) = meta.heartbeat().await {
                    debug!("metad did not confirm the leases: {e}");
                }
                asking.store(false, Ordering::SeqCst);
            });
        }
    }
}
