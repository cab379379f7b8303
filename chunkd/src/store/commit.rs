//! Group commit: one writer thread appends every new record and deletion to the volumes,
//! and requests that arrive while it syncs go out together in the next group, sharing one
//! `fdatasync` per file touched. Nothing is acknowledged, and the index does not change,
//! before the group is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::index::{Location, VolumeState, Volumes};
use super::{durable, volume};
use crate::shard::ShardHeader;
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::proto::ChunkdError;
use shardfs_rpc::sync::{Lock as _, ReadWrite as _};

/// Largest group: past this many bytes of records the writer syncs what it has.
const MAX_GROUP_BYTES: u64 = 64 << 20;
/// Appended bytes between two index checkpoints of the volume being filled, which bounds
/// what a start-up after a crash reads and verifies whole.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Space reserved ahead of the end of the volume being filled, so it grows in large
/// contiguous extents.
const PREALLOCATE_BYTES: u64 = 64 << 20;

/// A record to append: its header, and its bytes in parts (header, payload, tree, or one
/// part when copied whole from elsewhere).
pub struct NewRecord {
    pub header: ShardHeader,
    pub parts: Vec<Vec<u8>>,
}

impl NewRecord {
    fn shard(&self) -> ShardId {
        self.header.shard
    }

    fn len(&self) -> u64 {
        self.parts.iter().map(|part| part.len() as u64).sum()
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, ChunkdError>>;

pub enum Op {
    /// Store a shard; a shard already stored with the same record is left as it is.
    Put { record: NewRecord, reply: Reply<()> },
    /// Drop a shard; answers whether it was stored.
    Delete { shard: ShardId, reply: Reply<bool> },
    /// Drop a shard's record at `at` (found damaged), unless it has moved since.
    Forget { shard: ShardId, at: Location, reply: Reply<bool> },
    /// Copy a record from `from` (compaction), or in from outside the volumes (`None`:
    /// migration of a shard file), unless the shard has changed since it was read. Answers
    /// whether it was copied.
    Move { record: NewRecord, from: Option<Location>, reply: Reply<bool> },
    /// Remove a sealed volume once nothing in it is live (compaction's last step). Answers
    /// whether it was removed.
    Remove { number: u32, reply: Reply<bool> },
}

/// Sizes of the volumes the writer fills.
#[derive(Clone, Copy, Debug)]
pub struct VolumeConfig {
    /// A volume is sealed, and a new one started, once the next record would take it past
    /// this size (a record larger than this gets a volume of its own).
    pub volume_bytes: u64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig { volume_bytes: 1 << 30 }
    }
}

/// Starts the writer thread. It stops, checkpointing the volume it fills, once every sender
/// is dropped.
pub fn start(
    volumes: Arc<Volumes>,
    config: VolumeConfig,
) -> io::Result<(mpsc::UnboundedSender<Op>, JoinHandle<()>)> {
    let mut writer = Writer { volumes, config, active: 0, preallocated: 0, since_checkpoint: 0 };
    let last = writer.volumes.states.locked().last_key_value().map(|(&number, _)| number);
    match last {
        Some(number) => writer.active = number,
        None => writer.start_volume(1)?,
    }
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let handle = std::thread::Builder::new().name("volume-writer".into()).spawn(move || {
        while let Some(first) = receiver.blocking_recv() {
            let mut group = vec![first];
            let mut bytes = 0;
            while bytes < MAX_GROUP_BYTES
                && let Ok(op) = receiver.try_recv()
            {
                if let Op::Put { record, .. } | Op::Move { record, .. } = &op {
                    bytes += record.len();
                }
                group.push(op);
            }
            writer.commit(group);
        }
        if let Err(e) = writer.volumes.write_index(writer.active) {
            warn!(volume = writer.active, "cannot write the volume's index on close: {e}");
        }
    })?;
    Ok((sender, handle))
}

struct Writer {
    volumes: Arc<Volumes>,
    config: VolumeConfig,
    /// The volume new records go to.
    active: u32,
    /// End of the space reserved in the active volume.
    preallocated: u64,
    since_checkpoint: u64,
}

/// What an op will answer once its group is durable.
enum Answer {
    Unit(Reply<()>, Result<(), ChunkdError>),
    Flag(Reply<bool>, Result<bool, ChunkdError>),
    Remove(Reply<bool>, u32),
}

/// A group's plan: what to write where, and the index as it will be after it.
#[derive(Default)]
struct Plan {
    changes: HashMap<ShardId, Option<Location>>,
    appends: Vec<(Location, Vec<Vec<u8>>)>,
    deletions: BTreeMap<u32, Vec<u64>>,
    /// Volumes sealed while planning, to be indexed once the group is durable.
    sealed: Vec<u32>,
}

impl Plan {
    fn current(&self, volumes: &Volumes, shard: ShardId) -> Option<Location> {
        match self.changes.get(&shard) {
            Some(change) => change.clone(),
            None => volumes.index.read_locked().get(&shard).cloned(),
        }
    }

    fn kill(&mut self, shard: ShardId, location: &Location) {
        self.deletions.entry(location.volume.number).or_default().push(location.offset);
        self.changes.insert(shard, None);
    }
}

impl Writer {
    fn commit(&mut self, group: Vec<Op>) {
        let mut plan = Plan::default();
        let mut answers = Vec::with_capacity(group.len());
        for op in group {
            answers.push(self.decide(&mut plan, op));
        }
        let outcome = self.write(&plan);
        if let Err(e) = &outcome {
            warn!("group commit failed: {e}");
        }
        for answer in answers {
            match answer {
                Answer::Unit(reply, result) => {
                    let _ = reply.send(outcome.clone().and(result));
                }
                Answer::Flag(reply, result) => {
                    let _ = reply.send(outcome.clone().and(result));
                }
                Answer::Remove(reply, number) => {
                    let _ = reply.send(outcome.clone().and_then(|()| self.remove(number)));
                }
            }
        }
        for number in plan.sealed {
            self.checkpoint(number);
        }
        if self.since_checkpoint >= CHECKPOINT_BYTES {
            self.checkpoint(self.active);
        }
    }

    fn checkpoint(&mut self, number: u32) {
        if number == self.active {
            self.since_checkpoint = 0;
        }
        if let Err(e) = self.volumes.write_index(number) {
            warn!(volume = number, "cannot write the volume's index: {e}");
        }
    }

    /// Works out what `op` does, given the ops before it in the group.
    fn decide(&mut self, plan: &mut Plan, op: Op) -> Answer {
        match op {
            Op::Put { record, reply } => {
                let result = match plan.current(&self.volumes, record.shard()) {
                    Some(stored) if stored.header.checksum == record.header.checksum => Ok(()),
                    // Same id, different bytes: a client disagrees about the chunk's
                    // encoding. Overwriting could break the chunk for readers that rely on
                    // the stored one.
                    Some(_) => Err(ChunkdError::Invalid(format!(
                        "shard {} is already stored with different content",
                        record.shard()
                    ))),
                    None => self.append(plan, record),
                };
                Answer::Unit(reply, result)
            }
            Op::Delete { shard, reply } => {
                let stored = plan.current(&self.volumes, shard);
                if let Some(location) = &stored {
                    plan.kill(shard, location);
                }
                Answer::Flag(reply, Ok(stored.is_some()))
            }
            Op::Forget { shard, at, reply } => {
                let current = plan.current(&self.volumes, shard);
                let still_there = current.is_some_and(|current| current.same_place(&at));
                if still_there {
                    plan.kill(shard, &at);
                }
                Answer::Flag(reply, Ok(still_there))
            }
            Op::Remove { number, reply } => Answer::Remove(reply, number),
            Op::Move { record, from, reply } => {
                let current = plan.current(&self.volumes, record.shard());
                let unchanged = match (&current, &from) {
                    (None, None) => true,
                    (Some(current), Some(from)) => current.same_place(from),
                    _ => false,
                };
                let result = match unchanged {
                    true => {
                        if let Some(from) = &from {
                            plan.kill(record.shard(), from);
                        }
                        self.append(plan, record).map(|()| true)
                    }
                    false => Ok(false),
                };
                Answer::Flag(reply, result)
            }
        }
    }

    /// Removes sealed volume `number` if nothing in it is live.
    fn remove(&mut self, number: u32) -> Result<bool, ChunkdError> {
        let mut states = self.volumes.states.locked();
        let removable =
            number != self.active && states.get(&number).is_some_and(|state| state.live_count == 0);
        if !removable {
            return Ok(false);
        }
        volume::remove(self.volumes.dir(), number)
            .map_err(|e| super::io_error("remove", self.volumes.dir(), e))?;
        states.remove(&number);
        Ok(true)
    }

    /// Places `record` at the end of the active volume (starting a new one if it is full).
    fn append(&mut self, plan: &mut Plan, record: NewRecord) -> Result<(), ChunkdError> {
        let len = record.len();
        let mut end = self.end_of_active(plan);
        if end > 0 && end + len > self.config.volume_bytes {
            let sealed = self.active;
            self.start_volume(sealed + 1)
                .map_err(|e| super::io_error("create", self.volumes.dir(), e))?;
            plan.sealed.push(sealed);
            end = 0;
        }
        let file = self.volumes.states.locked()[&self.active].file.clone();
        self.reserve(&file, end + len);
        let shard = record.shard();
        let location = Location { volume: file, offset: end, len, header: record.header };
        plan.changes.insert(shard, Some(location.clone()));
        plan.appends.push((location, record.parts));
        Ok(())
    }

    /// Where the next record of the active volume goes, counting the group's appends.
    fn end_of_active(&self, plan: &Plan) -> u64 {
        match plan.appends.last() {
            Some((last, _)) if last.volume.number == self.active => last.offset + last.len,
            _ => self.volumes.states.locked()[&self.active].data_len,
        }
    }

    /// Reserves space ahead of `end` in the active volume, where the file system can.
    fn reserve(&mut self, file: &volume::VolumeFile, end: u64) {
        if end <= self.preallocated {
            return;
        }
        let target = (end + PREALLOCATE_BYTES).min(self.config.volume_bytes.max(end));
        // SAFETY: fallocate on an open descriptor we own, with plain integer arguments.
        let done = unsafe {
            libc::fallocate(
                file.file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                self.preallocated as libc::off_t,
                (target - self.preallocated) as libc::off_t,
            )
        };
        // Not every file system can (tmpfs before 3.5, some FUSE ones); appends work anyway.
        if done == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSPC) {
            self.preallocated = target;
        }
    }

    /// Creates volume `number` (data file and deletion log, durably) and makes it active.
    fn start_volume(&mut self, number: u32) -> io::Result<()> {
        let dir = self.volumes.dir().to_path_buf();
        let file = Arc::new(volume::open(&dir, number, true)?);
        let (del, del_len) = volume::open_del(&dir, number)?;
        durable::sync_dir(&dir)?;
        let state = VolumeState {
            file,
            del,
            del_len,
            data_len: 0,
            live_bytes: 0,
            live_count: 0,
            indexed_len: 0,
        };
        self.volumes.states.locked().insert(number, state);
        self.active = number;
        self.preallocated = 0;
        self.since_checkpoint = 0;
        info!(volume = number, "started a new volume");
        Ok(())
    }

    /// Writes the plan, syncs every file it touched, then applies it to the index. New
    /// records are synced before any deletion is written: a compaction's move marks the old
    /// copy dead in the same group, and the old copy must not die before the new one is on
    /// disk.
    fn write(&mut self, plan: &Plan) -> Result<(), ChunkdError> {
        let mut appended = BTreeSet::new();
        for (location, parts) in &plan.appends {
            write_parts(location, parts)
                .map_err(|e| super::io_error("write", &location.volume.path, e))?;
            appended.insert(location.volume.number);
        }
        for number in appended {
            let file = self.volumes.states.locked()[&number].file.clone();
            file.file.sync_data().map_err(|e| super::io_error("sync", &file.path, e))?;
        }
        let mut del_files = Vec::new();
        {
            let mut states = self.volumes.states.locked();
            for (&number, offsets) in &plan.deletions {
                let state = states.get_mut(&number).expect("deleted records are in known volumes");
                let entries = volume::del_entries(number, offsets);
                let path = volume::del_path(self.volumes.dir(), number);
                state
                    .del
                    .write_all_at(&entries, state.del_len)
                    .map_err(|e| super::io_error("write", &path, e))?;
                state.del_len += entries.len() as u64;
                del_files.push((state.del.try_clone(), path));
            }
        }
        for (file, path) in del_files {
            file.and_then(|file| file.sync_data())
                .map_err(|e| super::io_error("sync", &path, e))?;
        }
        self.apply(plan);
        Ok(())
    }

    fn apply(&mut self, plan: &Plan) {
        let mut index = self.volumes.index.write_locked();
        let mut states = self.volumes.states.locked();
        for (location, _) in &plan.appends {
            let state =
                states.get_mut(&location.volume.number).expect("appended to a known volume");
            state.data_len = state.data_len.max(location.offset + location.len);
            self.since_checkpoint += location.len;
        }
        for (&shard, change) in &plan.changes {
            let old = match change {
                Some(location) => {
                    let state = states.get_mut(&location.volume.number).expect("known volume");
                    state.live_bytes += location.len;
                    state.live_count += 1;
                    index.insert(shard, location.clone())
                }
                None => index.remove(&shard),
            };
            if let Some(old) = old
                && let Some(state) = states.get_mut(&old.volume.number)
            {
                state.live_bytes -= old.len;
                state.live_count -= 1;
            }
        }
    }
}

/// Writes a record's parts at its place, with as few system calls as the kernel allows.
fn write_parts(location: &Location, parts: &[Vec<u8>]) -> io::Result<()> {
    let mut slices: Vec<IoSlice> = parts.iter().map(|part| IoSlice::new(part)).collect();
    let mut slices = &mut slices[..];
    let mut at = location.offset;
    while !slices.is_empty() {
        let written = nix::sys::uio::pwritev(&location.volume.file, slices, at as libc::off_t)?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += written as u64;
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}
