//! Mutations are deterministic: the same sequence applied to two fresh stores gives the
//! same results and the same tables, and a batch gives what its mutations give one by one.

use proptest::prelude::*;
use rusqlite::types::Value;
use shardfs_chunk_api::{ChunkId, Encoding, ShardId};

use super::{Mutation, NewInode, Outcome};
use crate::store::Sql as _;
use crate::store::{ChunkdRecord, LockRow, Store, VolumeOverrides, VolumeSettings};
use shardfs_meta_api::proto::*;
use shardfs_meta_api::proto::{HeldLock, LockKind};

const SETTINGS: VolumeSettings = VolumeSettings {
    hot: Encoding::Rs { k: 2, m: 1 },
    cold: Encoding::Rs { k: 2, m: 1 },
    chunk_size: 1 << 20,
};
const CHUNKDS: [&str; 4] = ["c0", "c1", "c2", "c3"];

/// A step of a random history, picking what it acts on from what the store holds.
#[derive(Clone, Debug)]
enum Step {
    Create {
        dir: u8,
        name: u8,
        kind: u8,
    },
    Link {
        file: u8,
        dir: u8,
        name: u8,
    },
    Unlink {
        entry: u8,
    },
    RemoveDir {
        entry: u8,
    },
    Rename {
        entry: u8,
        dir: u8,
        name: u8,
        mode: u8,
    },
    SetAttr {
        inode: u8,
        mode: u16,
        size: Option<u16>,
    },
    SetXattr {
        inode: u8,
        name: u8,
        value: u8,
    },
    RemoveXattr {
        inode: u8,
        name: u8,
    },
    /// Writes chunk `chunk` of a pool of eight (so writes share chunks) into a file.
    Write {
        file: u8,
        chunk: u8,
        block: u8,
        inline: bool,
    },
    Clone {
        from: u8,
        to: u8,
        block: u8,
    },
    Punch {
        file: u8,
        block: u8,
    },
    /// Deletes every inode with no name left, as a last close does.
    Reclaim,
    Locks {
        file: u8,
        count: u8,
    },
    Session {
        id: u8,
        open: Option<u8>,
    },
    EndSession {
        id: u8,
    },
    Unhealthy {
        chunk: u8,
        chunkd: u8,
    },
    Move {
        chunk: u8,
        to: u8,
    },
    Collect,
    Register {
        chunkd: u8,
        free: u16,
    },
    Drain {
        chunkd: u8,
        on: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let b = any::<u8>;
    prop_oneof![
        6 => (b(), b(), 0..4u8).prop_map(|(dir, name, kind)| Step::Create { dir, name, kind }),
        2 => (b(), b(), b()).prop_map(|(file, dir, name)| Step::Link { file, dir, name }),
        3 => b().prop_map(|entry| Step::Unlink { entry }),
        2 => b().prop_map(|entry| Step::RemoveDir { entry }),
        3 => (b(), b(), b(), 0..4u8)
            .prop_map(|(entry, dir, name, mode)| Step::Rename { entry, dir, name, mode }),
        2 => (b(), any::<u16>(), proptest::option::of(any::<u16>()))
            .prop_map(|(inode, mode, size)| Step::SetAttr { inode, mode, size }),
        2 => (b(), 0..4u8, b()).prop_map(|(inode, name, value)| Step::SetXattr { inode, name, value }),
        1 => (b(), 0..4u8).prop_map(|(inode, name)| Step::RemoveXattr { inode, name }),
        5 => (b(), 0..8u8, 0..16u8, any::<bool>())
            .prop_map(|(file, chunk, block, inline)| Step::Write { file, chunk, block, inline }),
        1 => (b(), b(), 0..16u8).prop_map(|(from, to, block)| Step::Clone { from, to, block }),
        1 => (b(), 0..16u8).prop_map(|(file, block)| Step::Punch { file, block }),
        1 => Just(Step::Reclaim),
        1 => (b(), 0..3u8).prop_map(|(file, count)| Step::Locks { file, count }),
        1 => (0..3u8, proptest::option::of(b())).prop_map(|(id, open)| Step::Session { id, open }),
        1 => (0..3u8).prop_map(|id| Step::EndSession { id }),
        1 => (0..8u8, 0..4u8).prop_map(|(chunk, chunkd)| Step::Unhealthy { chunk, chunkd }),
        1 => (0..8u8, 0..4u8).prop_map(|(chunk, to)| Step::Move { chunk, to }),
        1 => Just(Step::Collect),
        1 => (0..4u8, any::<u16>()).prop_map(|(chunkd, free)| Step::Register { chunkd, free }),
        1 => (0..4u8, any::<bool>()).prop_map(|(chunkd, on)| Step::Drain { chunkd, on }),
    ]
}

fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    let path = dir.path().join(name);
    let store = Store::open(&path, VolumeOverrides::default(), SETTINGS).unwrap();
    // The root's times come from the clock when a store is made: set them alike.
    let at = SetTime::At(Timestamp { sec: 1, nsec: 0 });
    let changes = SetAttr { atime: Some(at), mtime: Some(at), ..SetAttr::default() };
    let now = Timestamp { sec: 1, nsec: 0 };
    store.apply(Mutation::SetAttr { ino: ROOT_INO, changes, now }).unwrap();
    store
}

/// Every row of every table, in order: two stores with equal dumps hold the same data.
fn dump(store: &Store) -> Vec<String> {
    store
        .read(|tx| {
            let tables: Vec<String> = tx
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .sql()?
                .query_map([], |r| r.get(0))
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            let mut rows = Vec::new();
            for table in tables {
                let mut statement = tx.prepare(&format!("SELECT * FROM \"{table}\"")).sql()?;
                let columns = statement.column_count();
                let mut these: Vec<String> = statement
                    .query_map([], |row| {
                        let values = (0..columns)
                            .map(|i| row.get::<_, Value>(i))
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(format!("{table}: {values:?}"))
                    })
                    .sql()?
                    .collect::<Result<_, _>>()
                    .sql()?;
                these.sort();
                rows.extend(these);
            }
            Ok(rows)
        })
        .unwrap()
}

/// What a store holds, to pick from.
struct Holdings {
    /// (parent, name, inode, kind) of every entry.
    entries: Vec<(Ino, Vec<u8>, Ino, FileKind)>,
    /// Every inode, named or not.
    inodes: Vec<Ino>,
    chunks: Vec<ChunkId>,
}

fn holdings(store: &Store) -> Holdings {
    store
        .read(|tx| {
            let entries = tx
                .prepare(
                    "SELECT d.parent, d.name, d.ino, i.kind FROM dentries d
                     JOIN inodes i ON i.ino = d.ino ORDER BY d.id",
                )
                .sql()?
                .query_map([], |r| {
                    let kind = super::super::kind_from_code(r.get(3)?)?;
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, kind))
                })
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            let inodes = tx
                .prepare("SELECT ino FROM inodes ORDER BY ino")
                .sql()?
                .query_map([], |r| r.get(0))
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            let chunks: Vec<Vec<u8>> = tx
                .prepare("SELECT id FROM chunks ORDER BY id")
                .sql()?
                .query_map([], |r| r.get(0))
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            let chunks = chunks.into_iter().map(|id| super::super::layout::chunk_id(id).unwrap());
            Ok(Holdings { entries, inodes, chunks: chunks.collect() })
        })
        .unwrap()
}

fn pick<T: Clone>(items: &[T], at: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[at as usize % items.len()].clone())
}

fn chunk(at: u8) -> (ChunkId, Vec<u8>) {
    let content = vec![at + 1; 4096];
    (ChunkId::of(&content), content)
}

/// The mutation `step` makes of what `store` holds, at time `now`; `None` if there is
/// nothing for it to act on.
fn mutation(store: &Store, step: &Step, now: Timestamp) -> Option<Mutation> {
    let held = holdings(store);
    let dirs: Vec<Ino> = std::iter::once(ROOT_INO)
        .chain(held.entries.iter().filter(|e| e.3 == FileKind::Dir).map(|e| e.2))
        .collect();
    let files: Vec<Ino> =
        held.entries.iter().filter(|e| e.3 == FileKind::File).map(|e| e.2).collect();
    let name = |n: u8| format!("n{}", n % 24).into_bytes();
    let cred = Cred { uid: 0, gid: 0, umask: 0o022, groups: Vec::new() };
    let next_ino = held.inodes.iter().max().copied().unwrap_or(ROOT_INO) + 1;
    Some(match *step {
        Step::Create { dir, name: n, kind } => {
            let (kind, target) = match kind {
                0 => (FileKind::File, None),
                1 => (FileKind::Dir, None),
                2 => (FileKind::Symlink, Some(b"target".to_vec())),
                _ => (FileKind::Fifo, None),
            };
            let new = NewInode { kind, perm: 0o755, umask: 0o022, cred, rdev: 0, target };
            Mutation::Create { ino: next_ino, parent: pick(&dirs, dir)?, name: name(n), new, now }
        }
        Step::Link { file, dir, name: n } => Mutation::Link {
            ino: pick(&files, file)?,
            new_parent: pick(&dirs, dir)?,
            new_name: name(n),
            now,
        },
        Step::Unlink { entry } => {
            let (parent, name, ..) = pick(&held.entries, entry)?;
            Mutation::Unlink { parent, name, now }
        }
        Step::RemoveDir { entry } => {
            let (parent, name, ..) = pick(&held.entries, entry)?;
            Mutation::RemoveDir { parent, name, now }
        }
        Step::Rename { entry, dir, name: n, mode } => {
            let (parent, old, ..) = pick(&held.entries, entry)?;
            let (mode, whiteout) = match mode {
                0 => (RenameMode::Replace, None),
                1 => (RenameMode::NoReplace, None),
                2 => (RenameMode::Exchange, None),
                _ => (RenameMode::Whiteout { no_replace: false }, Some((next_ino, cred))),
            };
            let new_parent = pick(&dirs, dir)?;
            Mutation::Rename {
                parent,
                name: old,
                new_parent,
                new_name: name(n),
                mode,
                whiteout,
                now,
            }
        }
        Step::SetAttr { inode, mode, size } => {
            let changes = SetAttr {
                mode: Some(u32::from(mode) & 0o7777),
                size: size.map(|s| u64::from(s) * 7),
                mtime: Some(SetTime::Now),
                ..SetAttr::default()
            };
            Mutation::SetAttr { ino: pick(&held.inodes, inode)?, changes, now }
        }
        Step::SetXattr { inode, name: n, value } => Mutation::SetXattr {
            ino: pick(&held.inodes, inode)?,
            name: format!("user.x{n}").into_bytes(),
            value: vec![value; usize::from(value % 9)],
            mode: XattrMode::Any,
            cred,
            now,
        },
        Step::RemoveXattr { inode, name: n } => Mutation::RemoveXattr {
            ino: pick(&held.inodes, inode)?,
            name: format!("user.x{n}").into_bytes(),
            now,
        },
        Step::Write { file, chunk: c, block, inline } => {
            let (id, content) = chunk(c);
            let ino = pick(&files, file)?;
            let (stored, inline) = if inline {
                (Vec::new(), vec![InlineChunk { chunk: id, data: content }])
            } else {
                let shards = (0..3)
                    .map(|i| ShardPlace {
                        index: i,
                        chunkd: CHUNKDS[usize::from(i)].into(),
                        addr: String::new(),
                    })
                    .collect();
                let stored = StoredChunk { chunk: id, len: 4096, encoding: SETTINGS.hot, shards };
                (vec![stored], Vec::new())
            };
            let extents = vec![Extent {
                offset: u64::from(block) * 4096,
                len: 4096,
                chunk: id,
                chunk_offset: 0,
            }];
            Mutation::CommitWrite { ino, stored, inline, extents, mtime: now, now }
        }
        Step::Clone { from, to, block } => Mutation::CloneRange {
            src: pick(&files, from)?,
            src_offset: 0,
            dst: pick(&files, to)?,
            dst_offset: u64::from(block) * 4096,
            len: 3 * 4096,
            now,
        },
        Step::Punch { file, block } => Mutation::Allocate {
            ino: pick(&files, file)?,
            offset: u64::from(block) * 4096,
            len: 8192,
            op: SpaceOp::PunchHole,
            now,
        },
        Step::Reclaim => {
            let nameless: Vec<Ino> = store
                .read(|tx| {
                    tx.prepare("SELECT ino FROM inodes WHERE nlink = 0 ORDER BY ino")
                        .sql()?
                        .query_map([], |r| r.get(0))
                        .sql()?
                        .collect::<Result<_, _>>()
                        .sql()
                })
                .unwrap();
            Mutation::Reclaim { inos: nameless, now }
        }
        Step::Locks { file, count } => {
            let ino = pick(&files, file)?;
            let locks = (0..u64::from(count))
                .map(|i| LockRow {
                    ino,
                    holder: i % 2,
                    owner: i,
                    held: HeldLock {
                        start: i * 10,
                        end: i * 10 + 9,
                        kind: LockKind::Write,
                        pid: 7,
                    },
                })
                .collect();
            Mutation::SaveLocks { ino, locks }
        }
        Step::Session { id, open } => match open.and_then(|at| pick(&files, at)) {
            Some(ino) => Mutation::Open { ino, holder: u64::from(id) },
            None => Mutation::SaveSession { id: u64::from(id), host: format!("host{id}") },
        },
        Step::EndSession { id } => Mutation::EndSession { id: u64::from(id) },
        Step::Unhealthy { chunk: c, chunkd } => {
            let chunk = pick(&held.chunks, c)?;
            let shards = (0..3).map(|index| ShardId { chunk, index }).collect();
            Mutation::MarkUnhealthy { chunkd: CHUNKDS[usize::from(chunkd)].into(), shards }
        }
        Step::Move { chunk: c, to } => Mutation::MoveShard {
            chunk: pick(&held.chunks, c)?,
            index: to % 3,
            from: CHUNKDS[usize::from(to % 3)].into(),
            to: CHUNKDS[usize::from(to)].into(),
        },
        Step::Collect => Mutation::RemoveChunks { chunks: held.chunks },
        Step::Register { chunkd, free } => {
            let id = CHUNKDS[usize::from(chunkd)];
            let record = ChunkdRecord {
                id: id.into(),
                addr: format!("{id}:1"),
                capacity_bytes: 1 << 40,
                free_bytes: u64::from(free) << 20,
                ..ChunkdRecord::default()
            };
            Mutation::RegisterChunkd { record, now }
        }
        Step::Drain { chunkd, on } => {
            Mutation::SetDraining { id: CHUNKDS[usize::from(chunkd)].into(), draining: on }
        }
    })
}

/// Resolves `steps` against `store` and applies each in turn; returns the mutations made
/// and their outcomes.
fn history(store: &Store, steps: &[Step]) -> (Vec<Mutation>, Vec<Outcome>) {
    let mut mutations = Vec::new();
    let mut outcomes = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let now = Timestamp { sec: 1_000 + i as i64, nsec: i as u32 };
        if let Some(mutation) = mutation(store, step, now) {
            outcomes.push(store.apply(mutation.clone()));
            mutations.push(mutation);
        }
    }
    (mutations, outcomes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_same_mutations_make_the_same_store(steps in proptest::collection::vec(step(), 100..400)) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (open(&dir, "a.db"), open(&dir, "b.db"));
        let (mutations, outcomes) = history(&a, &steps);
        prop_assert!(outcomes.iter().filter(|o| o.is_ok()).count() > mutations.len() / 4);
        for (mutation, outcome) in mutations.iter().zip(&outcomes) {
            // Through their encoding, as a replica would receive them.
            let received = Mutation::decode(&mutation.encode()).unwrap();
            prop_assert_eq!(&received, mutation);
            prop_assert_eq!(&b.apply(received), outcome);
        }
        prop_assert_eq!(dump(&a), dump(&b));
    }

    #[test]
    fn a_batch_equals_its_mutations_one_by_one(
        steps in proptest::collection::vec(step(), 100..300),
        cuts in proptest::collection::vec(1..40usize, 1..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (one_by_one, batched) = (open(&dir, "a.db"), open(&dir, "b.db"));
        let (mutations, outcomes) = history(&one_by_one, &steps);
        let mut results = Vec::new();
        let mut rest = &mutations[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, after) = rest.split_at((*cut).min(rest.len()));
            results.extend(batched.apply_batch(batch));
            rest = after;
        }
        prop_assert_eq!(&results, &outcomes);
        prop_assert_eq!(dump(&one_by_one), dump(&batched));
    }
}

#[test]
fn a_mutation_of_another_format_is_refused() {
    let mutation = Mutation::EndSession { id: 7 };
    let mut bytes = mutation.encode();
    assert_eq!(Mutation::decode(&bytes).unwrap(), mutation);
    bytes[0] = super::MUTATION_FORMAT + 1;
    assert!(Mutation::decode(&bytes).unwrap_err().to_string().contains("mutation format"));
    assert!(Mutation::decode(&[]).is_err());
}
