//! Live view of the chunkd registry: which chunkds are up, and how full they are.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardfs_chunk_api::proto::ChunkdStat;

use crate::store::{ChunkdRecord, Store};
use shardfs_meta_api::proto::{ChunkdStatus, MetaError};
use shardfs_rpc::sync::Lock as _;

/// A chunkd with less free space than this takes no new shards.
const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether a chunkd has too little space left to take new shards.
pub fn is_full(chunkd: &ChunkdRecord) -> bool {
    chunkd.free_bytes < MIN_FREE_BYTES
}

struct Member {
    record: ChunkdRecord,
    /// Last registration or heartbeat since this metad started; `None` until then.
    last_seen: Option<Instant>,
    /// What its last registration or heartbeat reported.
    stat: ChunkdStat,
}

pub struct Members {
    store: Arc<Store>,
    down_after: Duration,
    /// When this metad started: a chunkd never heard from since counts as silent from then.
    started: Instant,
    members: Mutex<HashMap<String, Member>>,
}

impl Members {
    /// Loads the registry. Every chunkd counts as down until it next heartbeats.
    pub fn load(store: Arc<Store>, down_after: Duration) -> Result<Members, MetaError> {
        let members = store
            .chunkds()?
            .into_iter()
            .map(|record| {
                (record.id.clone(), Member { record, last_seen: None, stat: ChunkdStat::default() })
            })
            .collect();
        Ok(Members { store, down_after, started: Instant::now(), members: Mutex::new(members) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.locked()
    }

    pub fn register(
        &self,
        id: String,
        addr: String,
        zone: Option<String>,
        stat: &ChunkdStat,
    ) -> Result<(), MetaError> {
        let record = ChunkdRecord {
            id: id.clone(),
            addr,
            zone,
            capacity_bytes: stat.capacity_bytes,
            free_bytes: stat.free_bytes,
            used_bytes: stat.used_bytes,
            shard_count: stat.shard_count,
            draining: self.lock().get(&id).is_some_and(|m| m.record.draining),
        };
        self.store.register_chunkd(&record)?;
        let member = Member { record, last_seen: Some(Instant::now()), stat: stat.clone() };
        self.lock().insert(id, member);
        Ok(())
    }

    /// Records a heartbeat; `false` if the chunkd is unknown and must register.
    pub fn heartbeat(&self, id: &str, stat: &ChunkdStat) -> bool {
        let mut members = self.lock();
        let Some(member) = members.get_mut(id) else {
            return false;
        };
        member.last_seen = Some(Instant::now());
        member.record.capacity_bytes = stat.capacity_bytes;
        member.record.free_bytes = stat.free_bytes;
        member.record.used_bytes = stat.used_bytes;
        member.record.shard_count = stat.shard_count;
        member.stat = stat.clone();
        true
    }

    pub fn is_known(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    fn is_up(&self, member: &Member, now: Instant) -> bool {
        member.last_seen.is_some_and(|seen| now.duration_since(seen) <= self.down_after)
    }

    /// Up, but silent for more than half the down-after time: likely dying, so new shards
    /// go elsewhere while it still counts as up.
    fn is_suspect(&self, member: &Member, now: Instant) -> bool {
        self.is_up(member, now)
            && member.last_seen.is_some_and(|seen| now.duration_since(seen) > self.down_after / 2)
    }

    /// Chunkds silent for longer than `grace` beyond being marked down: their shards count as
    /// lost and are rebuilt elsewhere.
    pub fn lost(&self, grace: Duration) -> HashSet<String> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|m| {
                let silent_since = m.last_seen.unwrap_or(self.started);
                now.duration_since(silent_since) > self.down_after + grace
            })
            .map(|m| m.record.id.clone())
            .collect()
    }

    /// `(id, address)` of every chunkd that is up.
    pub fn up(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|m| self.is_up(m, now))
            .map(|m| (m.record.id.clone(), m.record.addr.clone()))
            .collect()
    }

    /// The zone label of a registered chunkd.
    pub fn zone_of(&self, id: &str) -> Option<String> {
        self.lock().get(id).and_then(|m| m.record.zone.clone())
    }

    /// The current address of a chunkd that is up.
    pub fn address_if_up(&self, id: &str) -> Option<String> {
        let now = Instant::now();
        self.lock().get(id).filter(|m| self.is_up(m, now)).map(|m| m.record.addr.clone())
    }

    /// Starts or stops draining chunkd `id`; false if it is not registered.
    pub fn set_draining(&self, id: &str, draining: bool) -> Result<bool, MetaError> {
        if !self.store.set_draining(id, draining)? {
            return Ok(false);
        }
        if let Some(member) = self.lock().get_mut(id) {
            member.record.draining = draining;
        }
        Ok(true)
    }

    /// Removes chunkd `id` from the registry: only one that is down and holds no shard.
    pub fn forget(&self, id: &str) -> Result<(), MetaError> {
        // Not locked while the store changes: on a replica that waits for the group's log.
        let members = self.lock();
        let Some(member) = members.get(id) else {
            return Err(MetaError::Invalid(format!("no chunkd {id} is registered")));
        };
        if self.is_up(member, Instant::now()) {
            return Err(MetaError::Invalid(format!("chunkd {id} is up: stop it first")));
        }
        drop(members);
        let held = self.store.shards_on(id)?;
        if held > 0 {
            return Err(MetaError::Invalid(format!(
                "chunkd {id} still holds {held} shards: drain it first (shardfs chunkd drain)"
            )));
        }
        self.store.forget_chunkd(id)?;
        self.lock().remove(id);
        Ok(())
    }

    /// Chunkds being drained: repair moves their shards elsewhere.
    pub fn draining(&self) -> HashSet<String> {
        self.lock().values().filter(|m| m.record.draining).map(|m| m.record.id.clone()).collect()
    }

    /// Chunkds that may take new shards: up, not full, and not being drained.
    pub fn usable(&self) -> Vec<ChunkdRecord> {
        self.placeable().into_iter().filter(|c| !is_full(c)).collect()
    }

    /// Chunkds that would take new shards but are full.
    pub fn full(&self) -> usize {
        self.placeable().iter().filter(|c| is_full(c)).count()
    }

    /// Chunkds up, not suspect and not being drained, full or not.
    fn placeable(&self) -> Vec<ChunkdRecord> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|m| self.is_up(m, now) && !self.is_suspect(m, now) && !m.record.draining)
            .map(|m| m.record.clone())
            .collect()
    }

    pub fn status(&self) -> Vec<ChunkdStatus> {
        let now = Instant::now();
        let mut all: Vec<ChunkdStatus> = self
            .lock()
            .values()
            .map(|m| ChunkdStatus {
                id: m.record.id.clone(),
                addr: m.record.addr.clone(),
                zone: m.record.zone.clone(),
                up: self.is_up(m, now),
                suspect: self.is_suspect(m, now),
                capacity_bytes: m.record.capacity_bytes,
                free_bytes: m.record.free_bytes,
                used_bytes: m.record.used_bytes,
                shard_count: m.record.shard_count,
                draining: m.record.draining,
                scrub_passes: m.stat.scrub_passes,
                last_scrub_corrupt: m.stat.last_scrub_corrupt,
                quarantined: m.stat.quarantined,
                full: is_full(&m.record),
                reported: m.last_seen.is_some(),
                filesystem: m.stat.filesystem,
                volumes: m.stat.volumes,
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}
