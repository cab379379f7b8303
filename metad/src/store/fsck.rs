//! Metadata invariants, checked from scratch (and optionally repaired): what `shardfs fsck`
//! asks metad for.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::mutation::{Applied, Mutation};
use super::{Store, holdings, layout};
use shardfs_chunk_api::ChunkId;

use crate::store::Sql as _;
use shardfs_meta_api::proto::{Extent, FsckReport, Ino, MetaError, Problem, ROOT_INO, Timestamp};

impl Store {
    /// Recomputes link counts and refcounts and checks every reference. With `repair`, fixes
    /// what can be fixed without guessing: counts, dangling entries, extents past EOF,
    /// unreachable inodes. Placement and shard-count problems are reported only.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, MetaError> {
        let now = Timestamp::now();
        if !repair {
            // A check alone reads on a connection of its own, holding up no other request.
            let mut report = self.scan(|tx| check(tx, false, now, &mut Vec::new()))?;
            // A file that just lost its last name lingers a moment for opens on their way
            // (`open_files`): open, as far as they are concerned.
            (report.problems).retain(|problem| match problem {
                Problem::UnreachableInode { ino } => !self.open_files.is_open(*ino),
                _ => true,
            });
            return Ok(report);
        }
        // A repair is one change like any other.
        match self.apply(Mutation::Repair { now })?.0 {
            Applied::Checked(report) => Ok(report),
            other => Err(other.mismatch("a check's report")),
        }
    }
}

/// The checks, and with `repair` the fixes, in `tx`; inodes without a name that a session
/// has open are kept. Adds the inodes deleted to `deleted`.
pub(super) fn check(
    tx: &Connection,
    repair: bool,
    now: Timestamp,
    deleted: &mut Vec<Ino>,
) -> Result<FsckReport, MetaError> {
    let mut report = FsckReport {
        inodes: tx.query_row("SELECT COUNT(*) FROM inodes", [], |r| r.get(0)).sql()?,
        entries: tx.query_row("SELECT COUNT(*) FROM dentries", [], |r| r.get(0)).sql()?,
        chunks: tx.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0)).sql()?,
        ..FsckReport::default()
    };
    check_entries(tx, repair, &mut report)?;
    check_link_counts(tx, repair, &mut report, now, deleted)?;
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
        )
        .sql()?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    for (id, parent, name, ino, parent_kind) in rows {
        let name = String::from_utf8_lossy(&name).into_owned();
        report.problems.push(if parent_kind == Some(2) {
            Problem::DanglingEntry { parent, name, ino }
        } else {
            Problem::OrphanedEntry { parent, name }
        });
        if repair {
            tx.execute("DELETE FROM dentries WHERE id = ?1", [id]).sql()?;
            report.repaired += 1;
        }
    }
    Ok(())
}

fn check_link_counts(
    tx: &Connection,
    repair: bool,
    report: &mut FsckReport,
    now: Timestamp,
    deleted: &mut Vec<Ino>,
) -> Result<(), MetaError> {
    // Names per inode, and subdirectories per directory (each holds a "..").
    let mut names: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut statement = tx
        .prepare("SELECT d.parent, d.ino, i.kind FROM dentries d JOIN inodes i ON i.ino = d.ino")
        .sql()?;
    let mut rows = statement.query([]).sql()?;
    while let Some(row) = rows.next().sql()? {
        let (parent, ino, kind): (Ino, Ino, i64) =
            (row.get(0).sql()?, row.get(1).sql()?, row.get(2).sql()?);
        *names.entry(ino).or_default() += 1;
        if kind == 2 {
            *subdirs.entry(parent).or_default() += 1;
        }
    }
    drop(rows);
    drop(statement);
    let inodes: Vec<(Ino, i64, u32)> = tx
        .prepare("SELECT ino, kind, nlink FROM inodes")
        .sql()?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
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
            if holdings::is_open(tx, ino)? {
                continue;
            }
            report.problems.push(Problem::UnreachableInode { ino });
            if repair {
                layout::release_all(tx, ino, now)?;
                tx.execute("DELETE FROM xattrs WHERE ino = ?1", [ino]).sql()?;
                tx.execute("DELETE FROM inodes WHERE ino = ?1", [ino]).sql()?;
                deleted.push(ino);
                report.repaired += 1;
            }
            continue;
        }
        if actual != stored {
            report.problems.push(Problem::WrongLinkCount { ino, stored, actual });
            if repair {
                tx.execute("UPDATE inodes SET nlink = ?2 WHERE ino = ?1", params![ino, actual])
                    .sql()?;
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
        )
        .sql()?
        .query_map([&Extent::UNWRITTEN.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    for (ino, offset, chunk) in missing {
        // Nothing can bring the data back; the extent stays so the loss is visible (reads
        // fail) rather than silently turning into zeros.
        report.problems.push(Problem::MissingChunk { ino, offset, chunk: hex(&chunk) });
    }
    let past_eof: Vec<(Ino, u64, u64, u64)> = tx
        .prepare(
            "SELECT e.ino, e.offset, e.offset + e.len, i.size FROM extents e
             JOIN inodes i ON i.ino = e.ino WHERE e.offset + e.len > i.size",
        )
        .sql()?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
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
        )
        .sql()?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    for (chunk, stored, actual) in wrong {
        report.problems.push(Problem::WrongRefcount { chunk: hex(&chunk), stored, actual });
        if repair {
            tx.execute(
                "UPDATE chunks SET refcount = ?2,
                     zero_since = CASE WHEN ?2 = 0 THEN COALESCE(zero_since, ?3) ELSE NULL END
                 WHERE id = ?1",
                params![chunk, actual, now.sec],
            )
            .sql()?;
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
        )
        .sql()?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    for (chunk, index, chunkd) in unknown {
        report.problems.push(Problem::UnknownChunkd { chunk: hex(&chunk), index, chunkd });
    }
    let wrong: Vec<(Vec<u8>, u64, u64)> = tx
        .prepare(
            "SELECT c.id, (SELECT COUNT(*) FROM shards s WHERE s.chunk = c.id) AS n, c.k + c.m
             FROM chunks c WHERE n != c.k + c.m",
        )
        .sql()?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
    for (chunk, shards, expected) in wrong {
        report.problems.push(Problem::WrongShardCount { chunk: hex(&chunk), shards, expected });
    }
    let inline: Vec<(Vec<u8>, u64, Option<Vec<u8>>)> = tx
        .prepare(
            "SELECT c.id, c.len, i.data FROM chunks c LEFT JOIN inline_chunks i ON i.id = c.id
             WHERE c.k + c.m = 0",
        )
        .sql()?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()?;
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
