//! One replica of a group: its consensus engine, started over its database, its log and
//! its snapshots, and the endpoint that answers the other replicas.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{ForwardToLeader, RaftError};
use openraft::{Config, Raft, SnapshotPolicy, TryAsRef};
use shardfs_rpc::{ClientOptions, Handler, Service};

use super::log_store::LogStore;
use super::network::{self, Contacts, Network};
use super::state_machine::StateMachine;
use super::{Group, Proposal, Replica, ReplicaId};
use crate::store::{Change, Outcome, Proposer, Store};
use shardfs_meta_api::proto::MetaError;
use tracing::debug;

/// The log file, beside the database.
pub const LOG_FILE: &str = "raft-log.db";
/// The snapshot directory, beside the database.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Timing of a group on one LAN. Heartbeats every 150 ms (also how long an append may take
/// to be answered); a follower that hears no leader for 0.6 to 0.9 s after its lease ends
/// stands for election, so a dead leader is replaced in about 2 s (measured in
/// docs/performance.md, "Failover").
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A snapshot is taken once this many entries were applied since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the last snapshot, for followers a little behind.
    pub kept_after_snapshot: u64,
    /// Entries behind the snapshot that can go before the log is cut.
    pub purge_batch: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing::snapshotting_every(20_000)
    }
}

impl Timing {
    /// The default timing, with a snapshot every `entries` log entries, behind which a
    /// twentieth of them is kept, and the rest cut in batches of an eightieth.
    pub fn snapshotting_every(entries: u64) -> Timing {
        Timing {
            heartbeat_ms: 150,
            election_min_ms: 600,
            election_max_ms: 900,
            snapshot_every: entries,
            kept_after_snapshot: entries / 20,
            purge_batch: (entries / 80).max(1),
        }
    }
}

/// openraft's configuration for `timing`.
pub fn config(timing: Timing) -> Result<Arc<Config>, openraft::ConfigError> {
    let config = Config {
        cluster_name: "shardfs-metad".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        // The last chunk's answer waits for the whole image to be installed.
        install_snapshot_timeout: 60_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
        snapshot_max_chunk_size: 4 << 20,
        max_in_snapshot_log_to_keep: timing.kept_after_snapshot,
        purge_batch_size: timing.purge_batch,
        max_payload_entries: 64,
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Starts replica `id` over `store`, with its log and snapshots beside the database in
/// `dir`, reaching its peers with `options` and noting their answers in `contacts`.
pub async fn start(
    id: ReplicaId,
    dir: &Path,
    store: Arc<Store>,
    timing: Timing,
    options: ClientOptions,
    contacts: Arc<Contacts>,
) -> anyhow::Result<Raft<Group>> {
    let log = LogStore::open(&dir.join(LOG_FILE))?;
    let machine = StateMachine::new(store, &dir.join(SNAPSHOT_DIR))?;
    let network = Network::new(id, options, contacts);
    Ok(Raft::new(id, config(timing)?, network, log, machine).await?)
}

/// Hands a replica's batches of changes to the group's log: on the leader each batch becomes
/// one entry, and the outcomes are those its application on this replica came to; any
/// other replica refuses them (`Unavailable`, naming the leader if it knows one).
pub struct LogProposer {
    pub raft: Raft<Group>,
    /// The runtime the group runs on: proposals come from threads that may block.
    pub runtime: tokio::runtime::Handle,
}

impl Proposer for LogProposer {
    fn propose(&self, changes: Vec<Change>) -> Vec<Outcome> {
        let count = changes.len();
        let written = self.runtime.block_on(self.raft.client_write(Proposal { changes }));
        let refused = match written {
            Ok(written) if written.data.0.len() == count => return written.data.0,
            Ok(written) => MetaError::Store(format!(
                "a log entry of {count} changes came to {} outcomes",
                written.data.0.len()
            )),
            Err(e) => refusal(e),
        };
        (0..count).map(|_| Err(refused.clone())).collect()
    }

    fn confirm_lead(&self) -> Result<(), MetaError> {
        self.runtime.block_on(self.raft.ensure_linearizable()).map(drop).map_err(refusal)
    }
}

/// What a replica that cannot propose or confirm answers: "not the leader", naming the
/// leader if it knows one, whatever the reason (another leads, it lost its quorum, its log
/// is stopping for a restart or failed), so the client asks another replica. A change that
/// got into the log here anyway is either committed by the next leader, whose record then
/// answers the retry, or gone; it is never applied twice (`store/replies.rs`).
fn refusal<E>(e: RaftError<ReplicaId, E>) -> MetaError
where
    E: std::error::Error + TryAsRef<ForwardToLeader<ReplicaId, Replica>>,
{
    let leader = e.forward_to_leader::<Replica>().and_then(|f| f.leader_node.as_ref());
    if leader.is_none() {
        debug!("this replica cannot commit or confirm: {e}");
    }
    MetaError::NotLeader(leader.map(|n| n.addr.clone()))
}

/// Answers the `Replication` service for replica `me`.
pub struct Endpoint {
    pub raft: Raft<Group>,
    pub me: ReplicaId,
    pub contacts: Arc<Contacts>,
}

impl Handler for Endpoint {
    fn offers(&self, service: Service) -> bool {
        service == Service::Replication
    }

    async fn handle(
        self: Arc<Self>,
        _service: Service,
        _peer: SocketAddr,
        body: Bytes,
    ) -> Result<Vec<u8>, shardfs_rpc::Error> {
        let call: network::Call = shardfs_rpc::decode(&body)?;
        let answer = network::answer(&self.raft, self.me, &self.contacts, call).await;
        Ok(shardfs_rpc::encode(&answer))
    }
}
