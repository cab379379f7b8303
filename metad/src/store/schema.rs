//! The SQLite schema, as numbered migrations tracked in `PRAGMA user_version`.
//!
//! Migrations only ever append: a database written by an older build is brought forward one
//! step at a time; a database from a newer build is refused.

use rusqlite::Connection;

use super::StoreError;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the namespace, file layouts, chunk catalogue and chunkd registry.
    r#"
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    -- AUTOINCREMENT: inode numbers are never reused, so a client's cached ino never
    -- names a different file.
    CREATE TABLE inodes (
        ino        INTEGER PRIMARY KEY AUTOINCREMENT,
        generation INTEGER NOT NULL,
        kind       INTEGER NOT NULL,
        perm       INTEGER NOT NULL,
        uid        INTEGER NOT NULL,
        gid        INTEGER NOT NULL,
        size       INTEGER NOT NULL,
        allocated  INTEGER NOT NULL,
        nlink      INTEGER NOT NULL,
        atime_sec  INTEGER NOT NULL, atime_nsec INTEGER NOT NULL,
        mtime_sec  INTEGER NOT NULL, mtime_nsec INTEGER NOT NULL,
        ctime_sec  INTEGER NOT NULL, ctime_nsec INTEGER NOT NULL,
        rdev       INTEGER NOT NULL,
        -- Directories only: the directory holding this one (the root's is itself).
        parent     INTEGER,
        -- Symlinks only.
        target     BLOB
    ) STRICT;

    -- id orders entries for readdir and is the cookie clients resume from.
    CREATE TABLE dentries (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        parent INTEGER NOT NULL,
        name   BLOB NOT NULL,
        ino    INTEGER NOT NULL,
        UNIQUE (parent, name)
    ) STRICT;
    CREATE INDEX dentries_by_parent_id ON dentries (parent, id);
    CREATE INDEX dentries_by_ino ON dentries (ino);

    CREATE TABLE xattrs (
        ino   INTEGER NOT NULL,
        name  BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ino, name)
    ) STRICT, WITHOUT ROWID;

    -- Non-overlapping pieces of file content, each pointing into one chunk.
    CREATE TABLE extents (
        ino          INTEGER NOT NULL,
        offset       INTEGER NOT NULL,
        len          INTEGER NOT NULL,
        chunk        BLOB NOT NULL,
        chunk_offset INTEGER NOT NULL,
        PRIMARY KEY (ino, offset)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX extents_by_chunk ON extents (chunk);

    -- refcount = number of extents referencing the chunk. zero_since marks when it last
    -- dropped to zero, so garbage collection can wait out a grace period.
    CREATE TABLE chunks (
        id         BLOB PRIMARY KEY,
        len        INTEGER NOT NULL,
        k          INTEGER NOT NULL,
        m          INTEGER NOT NULL,
        refcount   INTEGER NOT NULL,
        created    INTEGER NOT NULL,
        zero_since INTEGER
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE shards (
        chunk   BLOB NOT NULL,
        idx     INTEGER NOT NULL,
        chunkd  TEXT NOT NULL,
        healthy INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (chunk, idx)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX shards_by_chunkd ON shards (chunkd);

    CREATE TABLE chunkds (
        id             TEXT PRIMARY KEY,
        addr           TEXT NOT NULL,
        zone           TEXT,
        capacity_bytes INTEGER NOT NULL,
        free_bytes     INTEGER NOT NULL,
        used_bytes     INTEGER NOT NULL,
        shard_count    INTEGER NOT NULL,
        registered     INTEGER NOT NULL,
        last_seen      INTEGER NOT NULL
    ) STRICT;
    "#,
    // Version 2: chunks of at most INLINE_MAX bytes kept here, catalogued in `chunks` with
    // k = m = 0 and no shards. A rowid table: its rows are too large for WITHOUT ROWID.
    r#"
    CREATE TABLE inline_chunks (
        id   BLOB PRIMARY KEY,
        data BLOB NOT NULL
    ) STRICT;
    "#,
    // Version 3: chunkds being drained (`shardfs chunkd drain`) take no new shards, and
    // repair moves theirs elsewhere.
    r#"
    ALTER TABLE chunkds ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
    "#,
    // Version 4: what mounts hold survives a metad restart: their sessions, their locks,
    // and the files they have open (an unlinked one lives until its last close).
    r#"
    CREATE TABLE sessions (
        id   INTEGER PRIMARY KEY,
        host TEXT NOT NULL
    ) STRICT;
    CREATE TABLE locks (
        ino    INTEGER NOT NULL,
        holder INTEGER NOT NULL,
        owner  INTEGER NOT NULL,
        -- Inclusive byte range, as u64 bit patterns (end u64::MAX: to end of file).
        start  INTEGER NOT NULL,
        end    INTEGER NOT NULL,
        write  INTEGER NOT NULL,
        pid    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX locks_by_ino ON locks (ino);
    CREATE TABLE open_files (
        ino    INTEGER NOT NULL,
        holder INTEGER NOT NULL,
        opens  INTEGER NOT NULL,
        PRIMARY KEY (ino, holder)
    ) STRICT, WITHOUT ROWID;
    "#,
    // Version 5: what a replica of a consensus group applied last (`replication/`): the log id of
    // the last entry applied, and the group's membership as of it, each postcard-encoded.
    r#"
    CREATE TABLE replication (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) STRICT;
    "#,
    // Version 6: the outcomes of mounts' recent changes, by request (`replies.rs`), so that
    // a request retried after a failover is applied once and answered as it was first.
    r#"
    CREATE TABLE replies (
        session INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        part    INTEGER NOT NULL,
        outcome BLOB NOT NULL,
        PRIMARY KEY (session, seq, part)
    ) STRICT, WITHOUT ROWID;
    "#,
    // Version 7: inode numbers sessions reserved for the inodes their batches make
    // (`batch.rs`): `next` up to `end` are still theirs to use, in order.
    r#"
    CREATE TABLE ino_ranges (
        session INTEGER NOT NULL,
        next    INTEGER NOT NULL,
        end     INTEGER NOT NULL,
        PRIMARY KEY (session, next)
    ) STRICT, WITHOUT ROWID;
    "#,
    // Version 8: readdir cookies reserved with the inode numbers: the name a batch makes
    // for inode `ino` takes dentry id `ino + entry_offset` (NULL in blocks reserved before).
    r#"
    ALTER TABLE ino_ranges ADD COLUMN entry_offset INTEGER;
    "#,
    // Version 9: storage classes. A chunk's class is `[class, k, m, l]` as
    // `Encoding::to_parts` packs it (0 rs, 1 replicas, 2 lrc with l local groups), so
    // `k + m` still counts its shards; chunks from before are all rs.
    r#"
    ALTER TABLE chunks ADD COLUMN class INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE chunks ADD COLUMN l INTEGER NOT NULL DEFAULT 0;
    "#,
    // Version 10: file attribute flags (`chattr`: `FS_*_FL` bits), project id and extent
    // size hint (`meta-api/src/file_flags.rs`).
    r#"
    ALTER TABLE inodes ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inodes ADD COLUMN projid INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inodes ADD COLUMN extsize INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew { found: current, supported: SCHEMA_VERSION });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
