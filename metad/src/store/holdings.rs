//! What client sessions hold, kept in the database so that it outlives a metad restart:
//! the sessions of mounts, their byte-range locks, and the files they have open (a file
//! unlinked while open lives until its last close, restart or not). The live tables are in
//! memory (`crate::sessions`, `crate::locks`, `open_files`); these rows follow them, and
//! are read back once, when metad starts.

use rusqlite::{Connection, params};

use super::Store;
use super::mutation::Mutation;
use super::open_files::Holder;
use crate::store::Sql as _;
use serde::{Deserialize, Serialize};
use shardfs_meta_api::proto::{Attr, Ino, MetaError};
use shardfs_meta_api::proto::{HeldLock, LockKind};

/// One byte-range lock as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRow {
    pub ino: Ino,
    pub holder: Holder,
    pub owner: u64,
    pub held: HeldLock,
}

/// What the previous run left held: sessions (id and host), their locks and open files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    pub sessions: Vec<(Holder, String)>,
    pub locks: Vec<LockRow>,
}

impl Store {
    /// Records a mount's session, so it can resume after a restart.
    pub fn save_session(&self, id: Holder, host: &str) -> Result<(), MetaError> {
        self.apply(Mutation::SaveSession { id, host: host.to_owned() }).map(drop)
    }

    /// Forgets a session that ended, with its locks and open files.
    pub fn end_session(&self, id: Holder) -> Result<(), MetaError> {
        self.apply(Mutation::EndSession { id }).map(drop)
    }

    /// Records the locks now held on `ino` (all of them, replacing what was recorded).
    pub fn save_locks(&self, ino: Ino, locks: &[LockRow]) -> Result<(), MetaError> {
        self.apply(Mutation::SaveLocks { ino, locks: locks.to_vec() }).map(drop)
    }

    /// The sessions and locks the previous run left, once the rows of holders without a
    /// session (tools' connections, which end with metad) are dropped.
    pub fn holdings(&self) -> Result<Holdings, MetaError> {
        self.apply(Mutation::DropOrphanedHoldings)?;
        self.scan(|tx| {
            let sessions = tx
                .prepare("SELECT id, host FROM sessions")
                .sql()?
                .query_map([], |r| Ok((r.get::<_, i64>(0)? as Holder, r.get(1)?)))
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            let locks = tx
                .prepare("SELECT ino, holder, owner, start, end, write, pid FROM locks")
                .sql()?
                .query_map([], |r| {
                    Ok(LockRow {
                        ino: r.get(0)?,
                        holder: r.get::<_, i64>(1)? as Holder,
                        owner: r.get::<_, i64>(2)? as u64,
                        held: HeldLock {
                            start: r.get::<_, i64>(3)? as u64,
                            end: r.get::<_, i64>(4)? as u64,
                            kind: if r.get(5)? { LockKind::Write } else { LockKind::Read },
                            pid: r.get(6)?,
                        },
                    })
                })
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            Ok(Holdings { sessions, locks })
        })
    }

    /// The files open by sessions the previous run left, with their counts.
    pub(super) fn saved_opens(&self) -> Result<Vec<(Ino, Holder, u64)>, MetaError> {
        self.apply(Mutation::DropOrphanedHoldings)?;
        self.read(|tx| {
            let opens = tx
                .prepare("SELECT ino, holder, opens FROM open_files")
                .sql()?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as Holder, r.get::<_, i64>(2)? as u64))
                })
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            Ok(opens)
        })
    }
}

pub(super) fn save_session(tx: &Connection, id: Holder, host: &str) -> Result<(), MetaError> {
    tx.prepare_cached("INSERT OR REPLACE INTO sessions (id, host) VALUES (?1, ?2)")
        .sql()?
        .execute(params![id as i64, host])
        .sql()?;
    Ok(())
}

pub(super) fn save_locks(tx: &Connection, ino: Ino, locks: &[LockRow]) -> Result<(), MetaError> {
    tx.prepare_cached("DELETE FROM locks WHERE ino = ?1").sql()?.execute([ino]).sql()?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO locks (ino, holder, owner, start, end, write, pid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .sql()?;
    for lock in locks {
        insert
            .execute(params![
                ino,
                lock.holder as i64,
                lock.owner as i64,
                lock.held.start as i64,
                lock.held.end as i64,
                lock.held.kind == LockKind::Write,
                lock.held.pid,
            ])
            .sql()?;
    }
    Ok(())
}

pub(super) fn open(tx: &Connection, ino: Ino, holder: Holder) -> Result<Attr, MetaError> {
    let attr = super::get_attr(tx, ino)?;
    tx.prepare_cached(
        "INSERT INTO open_files (ino, holder, opens) VALUES (?1, ?2, 1)
             ON CONFLICT (ino, holder) DO UPDATE SET opens = opens + 1",
    )
    .sql()?
    .execute(params![ino, holder as i64])
    .sql()?;
    Ok(attr)
}

pub(super) fn close(tx: &Connection, ino: Ino, holder: Holder) -> Result<(), MetaError> {
    tx.prepare_cached("UPDATE open_files SET opens = opens - 1 WHERE ino = ?1 AND holder = ?2")
        .sql()?
        .execute(params![ino, holder as i64])
        .sql()?;
    tx.prepare_cached("DELETE FROM open_files WHERE ino = ?1 AND holder = ?2 AND opens <= 0")
        .sql()?
        .execute(params![ino, holder as i64])
        .sql()?;
    Ok(())
}

/// Whether some session has `ino` open.
pub(super) fn is_open(tx: &Connection, ino: Ino) -> Result<bool, MetaError> {
    tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM open_files WHERE ino = ?1)")
        .sql()?
        .query_row([ino], |r| r.get(0))
        .sql()
}

pub(super) fn end_session(tx: &Connection, id: Holder) -> Result<(), MetaError> {
    for sql in [
        "DELETE FROM sessions WHERE id = ?1",
        "DELETE FROM locks WHERE holder = ?1",
        "DELETE FROM open_files WHERE holder = ?1",
        "DELETE FROM ino_ranges WHERE session = ?1",
    ] {
        tx.prepare_cached(sql).sql()?.execute([id as i64]).sql()?;
    }
    Ok(())
}

/// Drops locks and opens recorded for holders that have no session.
pub(super) fn drop_orphaned(tx: &Connection) -> Result<(), MetaError> {
    tx.execute("DELETE FROM locks WHERE holder NOT IN (SELECT id FROM sessions)", []).sql()?;
    tx.execute("DELETE FROM open_files WHERE holder NOT IN (SELECT id FROM sessions)", []).sql()?;
    tx.execute("DELETE FROM ino_ranges WHERE session NOT IN (SELECT id FROM sessions)", [])
        .sql()?;
    Ok(())
}
