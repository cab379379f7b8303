//! Membership with metad: register, heartbeat with usage figures, re-register when metad
//! has forgotten us, and forward reports of corrupt shards.
//!
//! metad being unreachable is normal (it restarts, or starts after the chunkds), so every
//! failure is retried forever; it is logged once per streak of failures, not once per try.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shardfs_rpc::{ClientOptions, DaemonAuth, Service};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::store::ShardStore;
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::membership::{MembershipError, MembershipRequest, MembershipResponse};

/// First wait before retrying a failed registration; doubles up to `MAX_BACKOFF`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between registration attempts: also the longest a chunkd stays unknown
/// after metad comes back.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Membership messages are tiny; an answer slower than this means metad is in trouble.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Corrupt-shard reports kept while metad is unreachable. Beyond this they are dropped:
/// metad's scrub finds those shards again.
pub const MAX_PENDING_REPORTS: usize = 100_000;

/// Who this chunkd is and where metad is.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    pub metad_addr: String,
    /// Stable chunkd id (`ShardStore::id`).
    pub id: String,
    /// Address clients use to reach this chunkd.
    pub advertise_addr: String,
    pub zone: Option<String>,
    pub interval: Duration,
    /// Proves to metad that this chunkd holds the cluster secret (over TLS if configured).
    pub auth: DaemonAuth,
}

/// Keeps this chunkd registered with metad until `shutdown` completes.
pub async fn run(
    config: HeartbeatConfig,
    store: Arc<ShardStore>,
    mut corrupt_reports: mpsc::Receiver<ShardId>,
    shutdown: impl Future<Output = ()>,
) {
    let options = ClientOptions {
        connect_timeout: CONNECT_TIMEOUT,
        request_timeout: REQUEST_TIMEOUT,
        ..config.auth.client_options()
    };
    // The next beat tries again: one does not go on looking for the leader past its turn.
    let client =
        shardfs_rpc::Replicas::new(&config.metad_addr, Service::Membership, options, |c| c)
            .failing_over_within(config.interval);
    let mut member = Member { config, client, store, failing: false, pending: BTreeSet::new() };
    tokio::select! {
        _ = shutdown => {}
        never = member.run(&mut corrupt_reports) => match never {},
    }
}

struct Member {
    config: HeartbeatConfig,
    client: shardfs_rpc::Replicas,
    store: Arc<ShardStore>,
    /// Whether the last exchange with metad failed; failures are logged only when this flips.
    failing: bool,
    /// Corrupt shards not yet reported.
    pending: BTreeSet<ShardId>,
}

/// Why an exchange with metad failed.
enum Failure {
    Unregistered,
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unregistered => f.write_str("metad does not know this chunkd"),
            Failure::Other(message) => f.write_str(message),
        }
    }
}

impl Member {
    async fn run(&mut self, reports: &mut mpsc::Receiver<ShardId>) -> Infallible {
        loop {
            self.register().await;
            self.heartbeat_until_forgotten(reports).await;
            info!(metad = %self.config.metad_addr, "metad no longer knows this chunkd; registering again");
        }
    }

    /// Registers, retrying with backoff until metad accepts.
    async fn register(&mut self) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            match self.try_register().await {
                Ok(()) => {
                    self.succeeded();
                    info!(
                        metad = %self.config.metad_addr,
                        id = %self.config.id,
                        addr = %self.config.advertise_addr,
                        "registered with metad"
                    );
                    return;
                }
                Err(failure) => self.failed("registration", &failure),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_register(&self) -> Result<(), Failure> {
        let stat = self.store.stat().await.map_err(|e| Failure::Other(e.to_string()))?;
        self.call(MembershipRequest::Register {
            id: self.config.id.clone(),
            addr: self.config.advertise_addr.clone(),
            zone: self.config.zone.clone(),
            stat,
        })
        .await
    }

    async fn heartbeat_until_forgotten(&mut self, reports: &mut mpsc::Receiver<ShardId>) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate; registration has just sent fresh figures.
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let result = match self.store.stat().await {
                        Ok(stat) => {
                            let id = self.config.id.clone();
                            self.call(MembershipRequest::Heartbeat { id, stat }).await
                        }
                        Err(e) => Err(Failure::Other(e.to_string())),
                    };
                    match result {
                        Ok(()) => self.succeeded(),
                        Err(Failure::Unregistered) => return,
                        Err(failure) => self.failed("heartbeat", &failure),
                    }
                }
                Some(shard) = reports.recv() => self.queue_report(shard),
            }
            if !self.pending.is_empty() && self.flush_reports().await.is_err() {
                return;
            }
        }
    }

    fn queue_report(&mut self, shard: ShardId) {
        if self.pending.len() < MAX_PENDING_REPORTS {
            self.pending.insert(shard);
        } else {
            warn!(%shard, "too many unsent corrupt-shard reports; dropping this one");
        }
    }

    /// Sends pending reports while metad answers. `Err` means metad no longer knows us.
    async fn flush_reports(&mut self) -> Result<(), ()> {
        while let Some(shard) = self.pending.first().copied() {
            let id = self.config.id.clone();
            match self.call(MembershipRequest::ReportCorrupt { id, shard }).await {
                Ok(()) => {
                    self.succeeded();
                    self.pending.remove(&shard);
                    info!(%shard, "reported corrupt shard to metad");
                }
                Err(Failure::Unregistered) => return Err(()),
                Err(failure) => {
                    // Kept for the next tick.
                    self.failed("corrupt-shard report", &failure);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn call(&self, request: MembershipRequest) -> Result<(), Failure> {
        let not_leader = |response: &MembershipResponse| match response {
            Err(MembershipError::NotLeader(leader)) => Some(leader.clone()),
            _ => None,
        };
        let response: MembershipResponse = (self.client.call(&request, not_leader).await)
            .map_err(|e| Failure::Other(e.to_string()))?;
        match response {
            Ok(_) => Ok(()),
            Err(MembershipError::UnknownChunkd(_)) => Err(Failure::Unregistered),
            Err(e @ (MembershipError::Rejected(_) | MembershipError::NotLeader(_))) => {
                Err(Failure::Other(e.to_string()))
            }
        }
    }

    fn failed(&mut self, what: &str, failure: &Failure) {
        if self.failing {
            debug!(metad = %self.config.metad_addr, "{what} failed: {failure}");
        } else {
            self.failing = true;
            warn!(metad = %self.config.metad_addr, "{what} failed: {failure}; will keep retrying");
        }
    }

    fn succeeded(&mut self) {
        if self.failing {
            self.failing = false;
            info!(metad = %self.config.metad_addr, "metad is answering again");
        }
    }
}

#[cfg(test)]
mod tests;
