//! Metadata invariants, checked from scratch (and optionally repaired): what `shardfs fsck`
//! asks metad for.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::mutation::{Applied, Mutation};
use super::{Store, layout, namespace};
use shardfs_chunkd::ChunkId;

use crate::proto::{Extent, Ino, MetaError, ROOT_INO, Timestamp};

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Problem {
    /// A directory entry names an inode that does not exist.
    DanglingEntry { parent: Ino, name: String, ino: Ino },
    /// An entry's parent is missing or not a directory.
    OrphanedEntry { parent: Ino, name: String },
    /// The stored link count differs from the one the entries imply.
    WrongLinkCount { ino: Ino, stored: u32, actual: u32 },
    /// An inode nobody names (and nobody has open).
    UnreachableInode { ino: Ino },
    /// A chunk's stored refcount differs from the number of extents using it.
    WrongRefcount { chunk: String, stored: u64, actual: u64 },
    /// An extent points at a chunk the catalogue does not have.
    MissingChunk { ino: Ino, offset: u64, chunk: String },
    /// An extent ends past its file's size.
    ExtentPastEof { ino: Ino, offset: u64, end: u64, size: u64 },
    /// A shard is placed on a chunkd that is not registered.
    UnknownChunkd { chunk: String, index: u8, chunkd: String },
    /// A chunk has the wrong number of shard rows for its encoding.
    WrongShardCount { chunk: String, shards: u64, expected: u64 },
    /// An inline chunk's content is missing or does not match its length and BLAKE3 id.
    BadInlineChunk { chunk: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::DanglingEntry { parent, name, ino } => {
                write!(f, "entry {name:?} in directory {parent} names missing inode {ino}")
            }
            Problem::OrphanedEntry { parent, name } => {
                write!(f, "entry {name:?} lies in {parent}, which is not a directory")
            }
            Problem::WrongLinkCount { ino, stored, actual } => {
                write!(f, "inode {ino} has link count {stored}, its entries imply {actual}")
            }
            Problem::UnreachableInode { ino } => write!(f, "inode {ino} has no name"),
            Problem::WrongRefcount { chunk, stored, actual } => {
                write!(f, "chunk {chunk} has refcount {stored}, {actual} extents use it")
            }
            Problem::MissingChunk { ino, offset, chunk } => {
                write!(f, "inode {ino} at offset {offset} uses uncatalogued chunk {chunk}")
            }
            Problem::ExtentPastEof { ino, offset, end, size } => {
                write!(f, "inode {ino} has an extent {offset}..{end} past its size {size}")
            }
            Problem::UnknownChunkd { chunk, index, chunkd } => {
                write!(f, "shard {index} of chunk {chunk} is on unregistered chunkd {chunkd}")
            }
            Problem::WrongShardCount { chunk, shards, expected } => {
                write!(f, "chunk {chunk} has {shards} shards, its encoding needs {expected}")
            }
            Problem::BadInlineChunk { chunk } => {
                write!(f, "inline chunk {chunk}: content missing or not matching its id")
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    pub inodes: u64,
    pub entries: u64,
    pub chunks: u64,
    pub problems: Vec<Problem>,
    /// How many of `problems` were fixed (only with `repair`).
    pub repaired: u64,
}

impl Store {
    /// Recomputes link counts and refcounts and checks every reference. With `repair`, fixes
    /// what can be fixed without guessing: counts, dangling entries, extents past EOF,
    /// unreachable inodes. Placement and shard-count problems are reported only.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, MetaError> {
        let now = Timestamp::now();
        if !repair {
            // A check alone reads on a connection of its own, holding up no other request.
            let is_open = |ino| self.open_files.is_open(ino);
            return self.scan(|tx| check(tx, false, &is_open, now, &mut Vec::new()));
        }
        // A repair is one change like any other, told which nameless inodes are open.
        self.with_writer(|writer| {
            let nameless = writer.read(namespace::nameless)?;
            let open = nameless.into_iter().filter(|&ino| self.open_files.is_open(ino)).collect();
            match writer.apply(Mutation::Repair { open, now })?.0 {
                Applied::Checked(report) => Ok(report),
                other => Err(other.mismatch("a check's report")),
            }
        })
    }
}

/// The checks, and with `repair` the fixes, in `tx`; `is_open` says which inodes without a
/// name are kept because they are open. Adds the inodes deleted to `deleted`.
pub(super) fn check(
    tx: &Connection,
    repair: bool,
    is_open: &dyn Fn(Ino) -> bool,
    now: Timestamp,
    deleted: &mut Vec<Ino>,
) -> Result<FsckReport, MetaError> {
    let mut report = FsckReport {
        inodes: tx.query_row("SELECT COUNT(*) FROM inodes", [], |r| r.get(0))?,
        entries: tx.query_row("SELECT COUNT(*) FROM dentries", [], |r| r.get(0))?,
        chunks: tx.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))?,
        ..FsckReport::default()
    };
    check_entries(tx, repair, &mut report)?;
    check_link_counts(tx, repair, &mut report, is_open, now, deleted)?;
    check_extents(tx, repair, &mut report, now)?;
    check_refcounts(tx, repair, &mut report, now)?;
    check_placement(tx, &mut report)?;
    Ok(report)
}

fn check_entries(tx: &Connection, repair: bool, report: &mut FsckReport) -> Result<(), MetaError> {
    /// A suspicious entry: its id, parent, name, inode, and its parent's kind if any.
    type EntryRow = (u64, Ino, Vec<u8>, Ino, Option<i64>);
    let rows: Vec<EntryRow> = tx
        .prepare(
            "SELECT d.id, d.parent, d.name, d.ino, p.kind FROM dentries d
             LEFT JOIN inodes i ON i.ino = d.ino LEFT JOIN inodes p ON p.ino = d.parent
             WHERE i.ino IS NULL OR p.ino IS NULL OR p.kind != 2",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    for (id, parent, name, ino, parent_kind) in rows {
        let name = String::from_utf8_lossy(&name).into_owned();
        report.problems.push(if parent_kind == Some(2) {
            Problem::DanglingEntry { parent, name, ino }
        } else {
            Problem::OrphanedEntry { parent, name }
        });
        if repair {
            tx.execute("DELETE FROM dentries WHERE id = ?1", [id])?;
            report.repaired += 1;
        }
    }
    Ok(())
}

fn check_link_counts(
    tx: &Connection,
    repair: bool,
    report: &mut FsckReport,
    is_open: &dyn Fn(Ino) -> bool,
    now: Timestamp,
    deleted: &mut Vec<Ino>,
) -> Result<(), MetaError> {
    // Names per inode, and subdirectories per directory (each holds a "..").
    let mut names: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut statement = tx
        .prepare("SELECT d.parent, d.ino, i.kind FROM dentries d JOIN inodes i ON i.ino = d.ino")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let (parent, ino, kind): (Ino, Ino, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        *names.entry(ino).or_default() += 1;
        if kind == 2 {
            *subdirs.entry(parent).or_default() += 1;
        }
    }
    drop(rows);
    drop(statement);
    let inodes: Vec<(Ino, i64, u32)> = tx
        .prepare("SELECT ino, kind, nlink FROM inodes")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (ino, kind, stored) in inodes {
        let named = names.get(&ino).copied().unwrap_or(0);
        let actual = if kind == 2 {
            // A directory: its entry (the root has none), its ".", and its subdirectories' "..".
            let own = if ino == ROOT_INO { 1 } else { named };
            own + 1 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            named
        };
        if actual == 0 && ino != ROOT_INO {
            if is_open(ino) {
                continue;
            }
            report.problems.push(Problem::UnreachableInode { ino });
            if repair {
                layout::release_all(tx, ino, now)?;
                tx.execute("DELETE FROM xattrs WHERE ino = ?1", [ino])?;
                tx.execute("DELETE FROM inodes WHERE ino = ?1", [ino])?;
                deleted.push(ino);
                report.repaired += 1;
            }
            continue;
        }
        if actual != stored {
            report.problems.push(Problem::WrongLinkCount { ino, stored, actual });
            if repair {
                tx.execute("UPDATE inodes SET nlink = ?2 WHERE ino = ?1", params![ino, actual])?;
                report.repaired += 1;
            }
        }
    }
    Ok(())
}

fn check_extents(
    tx: &Connection,
    repair: bool,
    report: &mut FsckReport,
    now: Timestamp,
) -> Result<(), MetaError> {
    let missing: Vec<(Ino, u64, Vec<u8>)> = tx
        .prepare(
            "SELECT e.ino, e.offset, e.chunk FROM extents e
             LEFT JOIN chunks c ON c.id = e.chunk WHERE c.id IS NULL AND e.chunk != ?1",
        )?
        .query_map([&Extent::UNWRITTEN.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (ino, offset, chunk) in missing {
        // Nothing can bring the data back; the extent stays so the loss is visible (reads
        // fail) rather than silently turning into zeros.
        report.problems.push(Problem::MissingChunk { ino, offset, chunk: hex(&chunk) });
    }
    let past_eof: Vec<(Ino, u64, u64, u64)> = tx
        .prepare(
            "SELECT e.ino, e.offset, e.offset + e.len, i.size FROM extents e
             JOIN inodes i ON i.ino = e.ino WHERE e.offset + e.len > i.size",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (ino, offset, end, size) in past_eof {
        report.problems.push(Problem::ExtentPastEof { ino, offset, end, size });
        if repair {
            layout::trim_past(tx, ino, size, now)?;
            report.repaired += 1;
        }
    }
    Ok(())
}

fn check_refcounts(
    tx: &Connection,
    repair: bool,
    report: &mut FsckReport,
    now: Timestamp,
) -> Result<(), MetaError> {
    let wrong: Vec<(Vec<u8>, u64, u64)> = tx
        .prepare(
            "SELECT c.id, c.refcount, (SELECT COUNT(*) FROM extents e WHERE e.chunk = c.id) AS n
             FROM chunks c WHERE c.refcount != n",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (chunk, stored, actual) in wrong {
        report.problems.push(Problem::WrongRefcount { chunk: hex(&chunk), stored, actual });
        if repair {
            tx.execute(
                "UPDATE chunks SET refcount = ?2,
                     zero_since = CASE WHEN ?2 = 0 THEN COALESCE(zero_since, ?3) ELSE NULL END
                 WHERE id = ?1",
                params![chunk, actual, now.sec],
            )?;
            report.repaired += 1;
        }
    }
    Ok(())
}

/// Shards on chunkds the catalogue does not know, and chunks with the wrong number of shard
/// rows. A shard a degraded write never placed (chunkd `''`) is neither: it is unhealthy,
/// counted in `status`, and repair places it.
fn check_placement(tx: &Connection, report: &mut FsckReport) -> Result<(), MetaError> {
    let unknown: Vec<(Vec<u8>, u8, String)> = tx
        .prepare(
            "SELECT s.chunk, s.idx, s.chunkd FROM shards s
             LEFT JOIN chunkds d ON d.id = s.chunkd WHERE d.id IS NULL AND s.chunkd != ''",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (chunk, index, chunkd) in unknown {
        report.problems.push(Problem::UnknownChunkd { chunk: hex(&chunk), index, chunkd });
    }
    let wrong: Vec<(Vec<u8>, u64, u64)> = tx
        .prepare(
            "SELECT c.id, (SELECT COUNT(*) FROM shards s WHERE s.chunk = c.id) AS n, c.k + c.m
             FROM chunks c WHERE n != c.k + c.m",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (chunk, shards, expected) in wrong {
        report.problems.push(Problem::WrongShardCount { chunk: hex(&chunk), shards, expected });
    }
    let inline: Vec<(Vec<u8>, u64, Option<Vec<u8>>)> = tx
        .prepare(
            "SELECT c.id, c.len, i.data FROM chunks c LEFT JOIN inline_chunks i ON i.id = c.id
             WHERE c.k + c.m = 0",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (chunk, len, data) in inline {
        let intact = data
            .is_some_and(|data| data.len() as u64 == len && ChunkId::of(&data).0[..] == chunk[..]);
        if !intact {
            report.problems.push(Problem::BadInlineChunk { chunk: hex(&chunk) });
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
