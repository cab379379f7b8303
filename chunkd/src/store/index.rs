//! The in-memory index of the volumes: where each shard's record is, and what each volume
//! holds. Rebuilt from the volume files when the store opens; after that only the group
//! commit writer changes it, once the changes are durable.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tracing::{info, warn};

use super::volume::{self, Record, VolumeFile};
use crate::shard::{ShardFormatError, ShardHeader};
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_rpc::sync::{Lock as _, ReadWrite as _};

/// Where a shard's record is, and its header (verified when the record was written or
/// read at start-up), so a ranged read need not read it again.
#[derive(Clone, Debug)]
pub struct Location {
    pub volume: Arc<VolumeFile>,
    pub offset: u64,
    pub len: u64,
    pub header: ShardHeader,
}

impl Location {
    pub fn same_place(&self, other: &Location) -> bool {
        self.volume.number == other.volume.number && self.offset == other.offset
    }

    fn record(&self) -> Record {
        Record { offset: self.offset, len: self.len, header: self.header.clone() }
    }
}

/// One volume's files and accounting.
#[derive(Debug)]
pub struct VolumeState {
    pub file: Arc<VolumeFile>,
    /// The deletion log, and where its next entry goes.
    pub del: File,
    pub del_len: u64,
    /// Bytes of records written (live or dead): where the next record goes.
    pub data_len: u64,
    pub live_bytes: u64,
    pub live_count: u64,
    /// Length the index file covers.
    pub indexed_len: u64,
}

impl VolumeState {
    pub fn dead_bytes(&self) -> u64 {
        self.data_len - self.live_bytes
    }
}

/// The volumes of a store and the index over them.
pub struct Volumes {
    pub dir: PathBuf,
    pub tmp_dir: PathBuf,
    pub index: RwLock<BTreeMap<ShardId, Location>>,
    pub states: Mutex<BTreeMap<u32, VolumeState>>,
}

/// Records found damaged when the volumes were read at start-up.
pub type Damaged = Vec<(ShardId, ShardFormatError)>;

impl Volumes {
    /// Reads every volume in `dir`: rebuilds the index, cuts off records a crash left
    /// half-written, marks older copies of a shard found twice dead (a compaction was
    /// interrupted) and indexes every volume whose index file is behind.
    pub fn open(dir: PathBuf, tmp_dir: PathBuf) -> io::Result<(Volumes, Damaged)> {
        let mut index = BTreeMap::new();
        let mut states = BTreeMap::new();
        let mut duplicates: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut damaged = Vec::new();
        let numbers = volume::numbers(&dir)?;
        volume::remove_orphans(&dir, &numbers)?;
        for number in numbers {
            let file = Arc::new(volume::open(&dir, number, false)?);
            let scanned = volume::scan(&dir, &file, true)?;
            if scanned.file_len > scanned.end {
                info!(
                    volume = number,
                    bytes = scanned.file_len - scanned.end,
                    "cut off the end of a volume a crash left half-written"
                );
                file.file.set_len(scanned.end)?;
                file.file.sync_data()?;
            }
            for (shard, offset, error) in scanned.damaged {
                warn!(volume = number, offset, %shard, "a record failed verification ({error})");
                damaged.push((shard, error));
            }
            let (del, del_len) = volume::open_del(&dir, number)?;
            let mut state = VolumeState {
                file: file.clone(),
                del,
                del_len,
                data_len: scanned.end,
                live_bytes: 0,
                live_count: 0,
                indexed_len: if scanned.indexed { scanned.end } else { 0 },
            };
            for record in scanned.records {
                let shard = record.header.shard;
                let location = Location {
                    volume: file.clone(),
                    offset: record.offset,
                    len: record.len,
                    header: record.header,
                };
                state.live_bytes += record.len;
                state.live_count += 1;
                // Volumes and records are read in the order they were written: the later
                // copy is the one a compaction made, or a put after a deletion.
                if let Some(older) = index.insert(shard, location) {
                    duplicates.entry(older.volume.number).or_default().push(older.offset);
                    let older_state = if older.volume.number == number {
                        &mut state
                    } else {
                        states.get_mut(&older.volume.number).expect("read before")
                    };
                    older_state.live_bytes -= older.len;
                    older_state.live_count -= 1;
                }
            }
            states.insert(number, state);
        }
        // A damaged record of a shard stored intact elsewhere needs no repair.
        damaged.retain(|(shard, _)| !index.contains_key(shard));
        let volumes =
            Volumes { dir, tmp_dir, index: RwLock::new(index), states: Mutex::new(states) };
        for (number, offsets) in duplicates {
            let mut states = volumes.states.locked();
            let state = states.get_mut(&number).expect("duplicates are in known volumes");
            let entries = volume::del_entries(number, &offsets);
            state.del.write_all_at(&entries, state.del_len)?;
            state.del.sync_data()?;
            state.del_len += entries.len() as u64;
        }
        let behind: Vec<u32> = volumes
            .states
            .locked()
            .iter()
            .filter(|(_, state)| state.indexed_len != state.data_len)
            .map(|(&number, _)| number)
            .collect();
        for number in behind {
            volumes.write_index(number)?;
        }
        Ok((volumes, damaged))
    }

    /// Writes volume `number`'s index file over its records as they are now.
    pub fn write_index(&self, number: u32) -> io::Result<()> {
        let data_len = match self.states.locked().get(&number) {
            Some(state) => state.data_len,
            None => return Ok(()),
        };
        let records: Vec<Record> = self
            .index
            .read_locked()
            .iter()
            .filter(|(_, location)| location.volume.number == number)
            .map(|(_, location)| location.record())
            .collect();
        volume::write_idx(&self.dir, &self.tmp_dir, number, data_len, &records)?;
        if let Some(state) = self.states.locked().get_mut(&number) {
            state.indexed_len = data_len;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Volume files, the bytes of records in them, and how many of those are dead.
    pub fn files(&self) -> (u64, u64, u64) {
        let states = self.states.locked();
        states.values().fold((0, 0, 0), |(count, bytes, dead), state| {
            (count + 1, bytes + state.data_len, dead + state.dead_bytes())
        })
    }

    /// Shards and bytes of live records.
    pub fn usage(&self) -> (u64, u64) {
        let states = self.states.locked();
        states.values().fold((0, 0), |(count, bytes), state| {
            (count + state.live_count, bytes + state.live_bytes)
        })
    }
}
