//! The log store and the state machine against openraft's own test suite of the storage
//! contract: what openraft relies on of them, on a real database and log on disk.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{Group, StorageError};
use crate::store::{Store, VolumeOverrides, VolumeSettings};
use shardfs_chunk_api::Encoding;

struct Replica;

impl StoreBuilder<Group, LogStore, StateMachine, TempDir> for Replica {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temporary directory");
        let settings =
            VolumeSettings { encoding: Encoding::new(2, 1).expect("2+1"), chunk_size: 1 << 20 };
        let store = Store::open(&dir.path().join("meta.db"), VolumeOverrides::default(), settings)
            .expect("store");
        let log = LogStore::open(&dir.path().join("raft-log.db"))?;
        let machine = StateMachine::new(Arc::new(store), &dir.path().join("snapshots"))?;
        Ok((dir, log, machine))
    }
}

#[test]
fn the_log_and_the_database_keep_openraft_s_storage_contract() {
    Suite::test_all(Replica).expect("the storage suite");
}
