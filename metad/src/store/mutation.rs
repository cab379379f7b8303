//! Every change to the database, as a value: a [`Mutation`] carries every input decided
//! before it is applied (times, new inode numbers, which nameless inodes may go, what a
//! chunkd's inventory lacks), and [`Store::apply`] applies it in one transaction, reading
//! nothing but the database. The same mutations applied in the same order to two copies of
//! a database leave them equal: what replication and group commit build on.
//!
//! Outside this module the store only reads, but for opening a database (schema migration
//! and the volume's settings, `mod.rs`).

use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use shardfs_chunk_api::{ChunkId, Encoding, ShardId};

use super::fsck;
use super::group_commit::Change;
use super::holdings::{self, LockRow};
use super::open_files::Holder;
use super::registry::{self, ChunkdRecord};
use super::{Store, batch, catalogue, classes, layout, namespace, xattr};
use crate::store::Sql as _;
use shardfs_meta_api::file_flags::FileFlags;
use shardfs_meta_api::proto::FsckReport;
use shardfs_meta_api::proto::{
    Access, Attr, Cred, Extent, FileKind, InlineChunk, Ino, MAX_SYMLINK_LEN, Made, MetaError,
    MetaRequest, NameRequest, Queued, RenameMode, SetAttr, SpaceOp, StoredChunk, Timestamp,
    Unlinked, XattrMode,
};
use shardfs_rpc::sync::Lock as _;

/// The encoding of mutations this build writes; [`decode`] reads this one only. Format 2
/// (storage classes) changed how a chunk's class is written; a log holding format 1
/// entries not yet applied is refused, so stop every replica cleanly before an upgrade.
pub const MUTATION_FORMAT: u8 = 2;

/// What a new inode looks like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInode {
    pub kind: FileKind,
    pub perm: u32,
    /// The creating process's umask, applied unless the directory has a default ACL.
    pub umask: u32,
    pub cred: Cred,
    pub rdev: u32,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
}

impl NewInode {
    /// A regular file, fifo, socket or device node: `mode` has the type bits (none makes a
    /// regular file, as mknod(2)).
    pub fn node(mode: u32, rdev: u32, cred: Cred) -> Result<NewInode, MetaError> {
        let kind = match FileKind::from_mode(mode) {
            Some(FileKind::Dir) | Some(FileKind::Symlink) => {
                return Err(MetaError::Invalid("mknod of a directory or symlink".into()));
            }
            Some(kind) => kind,
            None if mode & libc::S_IFMT == 0 => FileKind::File,
            None => {
                return Err(MetaError::Invalid(format!("unknown file type in mode {mode:o}")));
            }
        };
        let rdev =
            if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) { rdev } else { 0 };
        Ok(NewInode { kind, perm: mode & 0o7777, umask: cred.umask, cred, rdev, target: None })
    }

    pub fn dir(mode: u32, cred: Cred) -> NewInode {
        let umask = cred.umask;
        NewInode { kind: FileKind::Dir, perm: mode & 0o7777, umask, cred, rdev: 0, target: None }
    }

    pub fn symlink(target: &[u8], cred: Cred) -> Result<NewInode, MetaError> {
        if target.is_empty() {
            return Err(MetaError::NotFound);
        }
        if target.len() > MAX_SYMLINK_LEN {
            return Err(MetaError::NameTooLong);
        }
        let target = Some(target.to_vec());
        Ok(NewInode { kind: FileKind::Symlink, perm: 0o777, umask: 0, cred, rdev: 0, target })
    }
}

/// One change to the database, with every input it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// A new inode numbered `ino`, named `name` in directory `parent`.
    Create {
        ino: Ino,
        parent: Ino,
        name: Vec<u8>,
        new: NewInode,
        now: Timestamp,
    },
    Link {
        ino: Ino,
        new_parent: Ino,
        new_name: Vec<u8>,
        now: Timestamp,
    },
    Unlink {
        parent: Ino,
        name: Vec<u8>,
        now: Timestamp,
    },
    RemoveDir {
        parent: Ino,
        name: Vec<u8>,
        now: Timestamp,
    },
    /// `mode` is `Replace`, `NoReplace` or `Exchange`; `whiteout` names the character
    /// device (its inode number, its creator) left at the old name.
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        mode: RenameMode,
        whiteout: Option<(Ino, Cred)>,
        now: Timestamp,
    },
    SetAttr {
        ino: Ino,
        changes: SetAttr,
        now: Timestamp,
    },
    /// A read's atime update (relatime unless `strict`).
    Accessed {
        ino: Ino,
        strict: bool,
        now: Timestamp,
    },
    /// Deletes those of `inos` that have no name left and that no session has open, with
    /// their data references.
    Reclaim {
        inos: Vec<Ino>,
        now: Timestamp,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
        cred: Cred,
        now: Timestamp,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
        now: Timestamp,
    },
    Allocate {
        ino: Ino,
        offset: u64,
        len: u64,
        op: SpaceOp,
        now: Timestamp,
    },
    CloneRange {
        src: Ino,
        src_offset: u64,
        dst: Ino,
        dst_offset: u64,
        len: u64,
        now: Timestamp,
    },
    CommitWrite {
        ino: Ino,
        stored: Vec<StoredChunk>,
        inline: Vec<InlineChunk>,
        extents: Vec<Extent>,
        mtime: Timestamp,
        now: Timestamp,
    },
    /// Moves shard `index` of `chunk` from chunkd `from` to `to`, if it is still there.
    MoveShard {
        chunk: ChunkId,
        index: u8,
        from: String,
        to: String,
    },
    /// Moves `chunk` from class `from` to class `to`, whose shards are `shards` (index,
    /// chunkd), if it is still referenced and still in `from`; its old shards leave the
    /// catalogue, for the orphan sweep.
    SwitchClass {
        chunk: ChunkId,
        from: Encoding,
        to: Encoding,
        shards: Vec<(u8, String)>,
    },
    /// Deletes from the catalogue those of `chunks` still unreferenced.
    RemoveChunks {
        chunks: Vec<ChunkId>,
    },
    /// Marks `shards` unhealthy where the catalogue places them on `chunkd`.
    MarkUnhealthy {
        chunkd: String,
        shards: Vec<ShardId>,
    },
    RegisterChunkd {
        record: ChunkdRecord,
        now: Timestamp,
    },
    SetDraining {
        id: String,
        draining: bool,
    },
    /// Removes a chunkd from the registry, unless a shard is placed on it.
    ForgetChunkd {
        id: String,
    },
    SaveSession {
        id: Holder,
        host: String,
    },
    /// Forgets a session, with its locks and open files.
    EndSession {
        id: Holder,
    },
    /// The locks now held on `ino`, replacing those recorded.
    SaveLocks {
        ino: Ino,
        locks: Vec<LockRow>,
    },
    /// One more open of `ino` by `holder`; fails if `ino` is gone, so no open of a file
    /// being deleted is recorded. Answers its attributes.
    Open {
        ino: Ino,
        holder: Holder,
    },
    /// One open fewer of `ino` by `holder`.
    Close {
        ino: Ino,
        holder: Holder,
    },
    /// Drops the locks and open files of holders without a session.
    DropOrphanedHoldings,
    /// fsck's repairs (nameless inodes some session has open are kept).
    Repair {
        now: Timestamp,
    },
    /// Sets the volume's settings, and makes its root directory if it has none (a replica
    /// group's first entry).
    Volume {
        settings: super::VolumeSettings,
        now: Timestamp,
    },
    /// A mount's batch of reads, for atime (`AttrRequest::AccessedAt`).
    AccessedAt {
        accesses: Vec<Access>,
        strict: bool,
    },
    /// Hands session `session` the next `count` inode numbers (`ReserveInos`).
    ReserveInos {
        session: Holder,
        count: u32,
    },
    /// Session `session`'s batch of changes (`BatchRequest::Batch`), applied in order, each
    /// checked as the changes before it left the database, stopping at the first that fails
    /// (see `batch.rs`).
    Batch {
        session: Holder,
        changes: Vec<Queued>,
    },
    // New variants go last: entries a log holds are decoded by their variant's position.
    /// chattr: the inode's flags, project id and extent size hint become `flags`.
    SetFlags {
        ino: Ino,
        flags: FileFlags,
        now: Timestamp,
    },
}

impl Mutation {
    /// Whether it may free room on metad's disk (a deletion, a truncation): it may use the
    /// room reserved for that (see `reserve.rs`).
    pub fn frees_space(&self) -> bool {
        match self {
            Mutation::Unlink { .. }
            | Mutation::RemoveDir { .. }
            | Mutation::Reclaim { .. }
            | Mutation::RemoveXattr { .. }
            | Mutation::EndSession { .. }
            | Mutation::SaveLocks { .. }
            | Mutation::Close { .. }
            | Mutation::RemoveChunks { .. } => true,
            // A row of three integers; an open must not fail for want of room while the
            // reserve lasts.
            Mutation::Open { .. } => true,
            Mutation::SetAttr { changes, .. } => changes.size.is_some(),
            Mutation::Batch { changes, .. } => changes.iter().any(|queued| {
                matches!(
                    queued.request,
                    MetaRequest::Names(NameRequest::Unlink { .. } | NameRequest::RemoveDir { .. })
                )
            }),
            _ => false,
        }
    }

    /// The mutation as bytes: [`MUTATION_FORMAT`], then its postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![MUTATION_FORMAT];
        bytes.extend(shardfs_rpc::encode(self));
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Mutation, MetaError> {
        match bytes.split_first() {
            Some((&MUTATION_FORMAT, rest)) => shardfs_rpc::decode(rest)
                .map_err(|e| MetaError::Invalid(format!("malformed mutation: {e}"))),
            Some((format, _)) => Err(MetaError::Invalid(format!(
                "mutation format {format}; this build reads {MUTATION_FORMAT}"
            ))),
            None => Err(MetaError::Invalid("empty mutation".into())),
        }
    }
}

/// What applying a mutation gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    Attr(Attr),
    Made(Made),
    Unlinked(Unlinked),
    /// The inode a rename replaced, if any.
    Renamed(Option<Ino>),
    /// A clone's destination and the bytes it took.
    Cloned(Attr, u64),
    /// Whether a conditional change (a shard move, a draining flag) took effect.
    Changed(bool),
    /// How many rows a change touched.
    Count(u64),
    /// The first of the inode numbers a reservation handed out.
    /// The first inode number and readdir cookie reserved.
    Inos(Ino, u64),
    /// How many of a batch's changes were applied, the error of the one that failed, and
    /// the inodes the applied ones made.
    Batched {
        applied: u32,
        failed: Option<MetaError>,
        made: Vec<Ino>,
    },
    /// Shards of chunks removed from the catalogue, with their chunkds.
    Removed(Vec<(ShardId, String)>),
    Checked(FsckReport),
}

/// What applying one mutation came to.
pub type Outcome = Result<(Applied, Effects), MetaError>;

/// What a change did beyond its answer, for the caller's in-memory state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effects {
    /// Inodes other than directories that lost their last name: gone once nobody has them
    /// open.
    pub nameless: Vec<Ino>,
    /// Directories removed: gone once nobody has them open.
    pub removed_dirs: Vec<Ino>,
    /// Inodes deleted.
    pub deleted: Vec<Ino>,
    /// The volume's settings, if the change set them.
    pub volume: Option<super::VolumeSettings>,
}

impl Store {
    /// Applies `mutation`, in one transaction with whatever other changes are waiting for
    /// the writer (`group_commit.rs`).
    pub fn apply(&self, mutation: Mutation) -> Outcome {
        self.submit(Change::apply(mutation))
    }

    /// Applies `mutations` in one transaction, each in a savepoint of its own: one that
    /// fails leaves no trace, and the others keep their effects. Returns each one's result.
    pub fn apply_batch(&self, mutations: &[Mutation]) -> Vec<Outcome> {
        self.with_writer(|writer| writer.apply_batch(mutations))
    }

    /// Runs `f` holding the database's one writer: group commit's batches, and a replica's
    /// log entries, are committed this way.
    pub(super) fn with_writer<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> T) -> T {
        let mut conn = self.conn.locked();
        let mut writer = Writer { conn: &mut conn, store: self };
        f(&mut writer)
    }
}

/// The database's writer, held (see [`Store::with_writer`]).
pub struct Writer<'a> {
    conn: &'a mut Connection,
    store: &'a Store,
}

impl Writer<'_> {
    /// See [`Store::apply_batch`].
    pub fn apply_batch(&mut self, mutations: &[Mutation]) -> Vec<Outcome> {
        let changes: Vec<Change> = mutations.iter().cloned().map(Change::apply).collect();
        self.commit(&changes)
    }

    /// Applies `changes` in one transaction, each in a savepoint of its own; if the disk is
    /// full and one of them frees space, again with the room reserved for that.
    pub fn commit(&mut self, changes: &[Change]) -> Vec<Outcome> {
        match self.try_commit(changes, &[]) {
            Err(MetaError::MetadataFull)
                if changes.iter().any(Change::frees_space) && self.store.give_up_reserve() =>
            {
                self.try_commit(changes, &[]).unwrap_or_else(|e| failed_all(changes, &e))
            }
            Err(e) => failed_all(changes, &e),
            Ok(outcomes) => outcomes,
        }
    }

    /// Applies `changes` as [`Writer::commit`] does, and sets the `replication` rows `record`
    /// in the same transaction: a replica's note of the log entries the changes came from.
    /// Fails as a whole (a full disk even with the reserve given up, an I/O error) rather
    /// than with an outcome per change: every replica must come to the same outcomes, and
    /// what fails this way fails on one replica's disk only.
    pub fn commit_recorded(
        &mut self,
        changes: &[Change],
        record: &[(&str, Vec<u8>)],
    ) -> Result<Vec<Outcome>, MetaError> {
        match self.try_commit(changes, record) {
            Err(MetaError::MetadataFull) if self.store.give_up_reserve() => {
                self.try_commit(changes, record)
            }
            result => result,
        }
    }

    /// [`Writer::commit`], once, with `record` (see [`Writer::commit_recorded`]); a full disk
    /// fails it as a whole.
    fn try_commit(
        &mut self,
        changes: &[Change],
        record: &[(&str, Vec<u8>)],
    ) -> Result<Vec<Outcome>, MetaError> {
        let mut tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).sql()?;
        let mut outcomes = Vec::with_capacity(changes.len());
        // One change alone needs no savepoint: if it fails, nothing is committed. With a
        // record, the record is committed whatever the change came to.
        let alone = changes.len() == 1 && record.is_empty();
        for change in changes {
            // A retried request's change that was applied already: its first outcome.
            if let Some(id) = change.request
                && let Some(outcome) = super::replies::recorded(&tx, id)?
            {
                outcomes.push(outcome);
                continue;
            }
            let mut effects = Effects::default();
            let applied = match change.decide(&tx) {
                Err(e) => Err(e),
                Ok(mutation) if alone => apply_in(&tx, &mutation, &mut effects),
                Ok(mutation) => {
                    let savepoint = tx.savepoint().sql()?;
                    let applied = apply_in(&savepoint, &mutation, &mut effects);
                    if applied.is_ok() {
                        savepoint.commit().sql()?;
                    }
                    applied
                }
            };
            match applied {
                Ok(applied) => {
                    let outcome = Ok((applied, effects));
                    if let Some(id) = change.request {
                        super::replies::record(&tx, id, &outcome)?;
                    }
                    outcomes.push(outcome);
                }
                Err(MetaError::MetadataFull) => return Err(MetaError::MetadataFull),
                Err(e) if alone => return Ok(vec![Err(e)]),
                Err(e) => outcomes.push(Err(e)),
            }
        }
        for (key, value) in record {
            super::replica::set(&tx, key, value)?;
        }
        tx.commit().sql()?;
        for (_, effects) in outcomes.iter().flatten() {
            self.store.committed(effects);
        }
        Ok(outcomes)
    }
}

/// The results of a batch that failed as a whole.
fn failed_all(changes: &[Change], e: &MetaError) -> Vec<Outcome> {
    changes.iter().map(|_| Err(e.clone())).collect()
}

/// Applies one mutation inside `tx`. Reads nothing but the database and the mutation.
pub(super) fn apply_in(
    tx: &Connection,
    mutation: &Mutation,
    effects: &mut Effects,
) -> Result<Applied, MetaError> {
    use Mutation as M;
    Ok(match mutation {
        M::Create { ino, parent, name, new, now } => {
            let attr = namespace::create(tx, *ino, *parent, name, new, *now)?;
            Applied::Made(namespace::made(tx, attr, *parent, name)?)
        }
        M::Link { ino, new_parent, new_name, now } => {
            Applied::Made(namespace::link(tx, *ino, *new_parent, new_name, *now)?)
        }
        M::Unlink { parent, name, now } => {
            Applied::Unlinked(namespace::unlink(tx, *parent, name, *now, effects)?)
        }
        M::RemoveDir { parent, name, now } => {
            namespace::remove_dir(tx, *parent, name, *now, effects)?;
            Applied::Done
        }
        M::Rename { parent, name, new_parent, new_name, mode, whiteout, now } => {
            let names =
                namespace::Names { parent: *parent, name, new_parent: *new_parent, new_name };
            Applied::Renamed(namespace::rename(tx, names, *mode, whiteout, *now, effects)?)
        }
        M::SetAttr { ino, changes, now } => {
            Applied::Attr(namespace::set_attr(tx, *ino, changes, *now)?)
        }
        M::Accessed { ino, strict, now } => {
            Applied::Attr(namespace::accessed(tx, *ino, *strict, *now)?)
        }
        M::SetFlags { ino, flags, now } => {
            Applied::Attr(namespace::set_flags(tx, *ino, flags, *now)?)
        }
        M::AccessedAt { accesses, strict } => {
            for access in accesses {
                namespace::accessed_at(tx, access, *strict)?;
            }
            Applied::Done
        }
        M::Reclaim { inos, now } => {
            for &ino in inos {
                if namespace::reclaim_if_nameless(tx, ino, *now)? {
                    effects.deleted.push(ino);
                }
            }
            Applied::Done
        }
        M::SetXattr { ino, name, value, mode, cred, now } => {
            xattr::set(tx, *ino, name, value, *mode, cred, *now)?;
            Applied::Attr(super::get_attr(tx, *ino)?)
        }
        M::RemoveXattr { ino, name, now } => {
            xattr::remove(tx, *ino, name, *now)?;
            Applied::Attr(super::get_attr(tx, *ino)?)
        }
        M::Allocate { ino, offset, len, op, now } => {
            Applied::Attr(layout::allocate(tx, *ino, *offset, *len, *op, *now)?)
        }
        M::CloneRange { src, src_offset, dst, dst_offset, len, now } => {
            let (attr, len) =
                layout::clone_range(tx, (*src, *src_offset), (*dst, *dst_offset), *len, *now)?;
            Applied::Cloned(attr, len)
        }
        M::CommitWrite { ino, stored, inline, extents, mtime, now } => {
            Applied::Attr(layout::commit_write(tx, *ino, stored, inline, extents, *mtime, *now)?)
        }
        M::MoveShard { chunk, index, from, to } => {
            Applied::Changed(catalogue::move_shard(tx, *chunk, *index, from, to)?)
        }
        M::SwitchClass { chunk, from, to, shards } => {
            Applied::Changed(classes::switch_class(tx, *chunk, (*from, *to), shards)?)
        }
        M::RemoveChunks { chunks } => Applied::Removed(catalogue::remove_chunks(tx, chunks)?),
        M::MarkUnhealthy { chunkd, shards } => {
            Applied::Count(catalogue::mark_unhealthy(tx, chunkd, shards)?)
        }
        M::RegisterChunkd { record, now } => {
            registry::register(tx, record, *now)?;
            Applied::Done
        }
        M::SetDraining { id, draining } => {
            Applied::Changed(registry::set_draining(tx, id, *draining)?)
        }
        M::ForgetChunkd { id } => {
            registry::forget(tx, id)?;
            Applied::Done
        }
        M::SaveSession { id, host } => {
            holdings::save_session(tx, *id, host)?;
            Applied::Done
        }
        M::EndSession { id } => {
            holdings::end_session(tx, *id)?;
            super::replies::forget_session(tx, *id)?;
            Applied::Done
        }
        M::SaveLocks { ino, locks } => {
            holdings::save_locks(tx, *ino, locks)?;
            Applied::Done
        }
        M::Open { ino, holder } => Applied::Attr(holdings::open(tx, *ino, *holder)?),
        M::Close { ino, holder } => {
            holdings::close(tx, *ino, *holder)?;
            Applied::Done
        }
        M::DropOrphanedHoldings => {
            holdings::drop_orphaned(tx)?;
            Applied::Done
        }
        M::Repair { now } => Applied::Checked(fsck::check(tx, true, *now, &mut effects.deleted)?),
        M::Volume { settings, now } => {
            super::put_volume(tx, *settings, *now)?;
            effects.volume = Some(*settings);
            Applied::Done
        }
        M::ReserveInos { session, count } => {
            let (first, first_cookie) = batch::reserve(tx, *session, *count)?;
            Applied::Inos(first, first_cookie)
        }
        M::Batch { session, changes } => batch::apply(tx, *session, changes, effects)?,
    })
}

impl Applied {
    pub(super) fn mismatch(self, wanted: &str) -> MetaError {
        MetaError::Store(format!("a change answered {self:?} where {wanted} was due"))
    }

    pub fn into_attr(self) -> Result<Attr, MetaError> {
        match self {
            Applied::Attr(attr) => Ok(attr),
            other => Err(other.mismatch("attributes")),
        }
    }

    pub fn into_made(self) -> Result<Made, MetaError> {
        match self {
            Applied::Made(made) => Ok(made),
            other => Err(other.mismatch("a new name")),
        }
    }

    pub fn into_changed(self) -> Result<bool, MetaError> {
        match self {
            Applied::Changed(changed) => Ok(changed),
            other => Err(other.mismatch("whether it changed")),
        }
    }
}

#[cfg(test)]
mod tests;
