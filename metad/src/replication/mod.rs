//! metad as a consensus group of replicas (openraft): the replicated log and the state
//! machine it drives.
//!
//! A log entry's payload is a [`Proposal`]: a batch of store changes, as group commit made
//! them (one entry, one append, one transaction on every replica). Every replica applies the
//! entries in log order to its own database (`state_machine.rs`), and the answer of each
//! change ([`Outcome`]) is the same on all of them, since a change reads nothing but the
//! database and itself.
//!
//! - [`log_store`]: the log and the vote, in `raft-log.db` beside the database.
//! - [`state_machine`]: the database as the state machine, and its snapshots.
//! - [`snapshot_file`]: a snapshot as openraft moves it, a file.
//! - [`network`]: replicas calling each other over shardfs's transport.
//! - [`group`]: one replica, started, and its endpoint for the others.
//! - [`node`]: a replica as a daemon, serving clients while it leads.
//! - [`membership`]: adding and removing replicas, and promoting a learner.
//! - [`metrics`]: a replica's role and progress as metrics.

// openraft's storage traits return its `StorageError` (over 200 bytes); the helpers here
// return what those traits do.
#![allow(clippy::result_large_err)]

pub mod group;
pub mod log_store;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod snapshot_file;
pub mod state_machine;
#[cfg(test)]
mod tests;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::{Change, Outcome};
use snapshot_file::SnapshotFile;

openraft::declare_raft_types!(
    /// The types a metad group's consensus runs on.
    pub Group:
        D = Proposal,
        R = Answers,
        NodeId = u64,
        Node = Replica,
        Entry = openraft::Entry<Group>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica's id within its group.
pub type ReplicaId = u64;

/// Where a replica is reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub addr: String,
}

/// What a log entry asks every replica to apply: changes, in order, each all or nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub changes: Vec<Change>,
}

/// What applying a log entry came to: one outcome per change of its proposal (none for an
/// entry that is not a proposal).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers(pub Vec<Outcome>);

/// A storage failure as openraft takes it: the replica stops, since it can no longer keep
/// its promises about what is on its disk.
type StorageError = openraft::StorageError<ReplicaId>;

/// The encoding of what a replica keeps (log entries, its vote, its notes of what it
/// applied, snapshot descriptions) that this build writes and reads.
const RECORD_FORMAT: u8 = 1;

/// A record as kept: [`RECORD_FORMAT`], then its postcard encoding.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![RECORD_FORMAT];
    bytes.extend(shardfs_rpc::encode(value));
    bytes
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => shardfs_rpc::decode(rest).map_err(|e| e.to_string()),
        Some((format, _)) => {
            Err(format!("record format {format}; this build reads {RECORD_FORMAT}"))
        }
        None => Err("an empty record".to_string()),
    }
}
