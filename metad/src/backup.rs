//! Backups of metad's database, taken while metad runs, and their restore into the data
//! directory of a stopped metad.
//!
//! A backup copies the database page by page with SQLite's online backup API, inside one
//! read transaction: WAL mode lets metad go on committing meanwhile, and the copy is the
//! database as of the moment the transaction began, never a mix of two states. It is checked
//! (`PRAGMA integrity_check`) and made durable before it takes its final name.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::store::SCHEMA_VERSION;

/// The database file in a metad data directory.
pub const DATABASE: &str = "meta.db";
/// Held (flock) by the metad serving a data directory.
pub const LOCK_FILE: &str = "metad.lock";

/// Pages copied per backup step, between progress reports.
const PAGES_PER_STEP: i32 = 1024;

/// Where a backup or restore got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub pages_done: u64,
    pub pages_total: u64,
}

/// Takes the lock of metad data directory `dir`: held for as long as the file lives.
/// Fails with a clear message if a metad (or a restore) holds it.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("{} is in use by a running metad (or a restore)", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Copies the database of metad data directory `dir` to `to`, consistent as of one moment
/// even while metad writes. `to` must not exist.
pub fn backup(dir: &Path, to: &Path, progress: impl FnMut(Progress)) -> anyhow::Result<u64> {
    let source_path = dir.join(DATABASE);
    if !source_path.exists() {
        bail!("{} holds no metad database", dir.display());
    }
    backup_file(&source_path, to, progress)
}

/// Copies the metad database at `source_path` to `to` as [`backup`] does.
pub fn backup_file(
    source_path: &Path,
    to: &Path,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<u64> {
    if to.exists() {
        bail!("{} already exists; not overwriting it", to.display());
    }
    let source = Connection::open_with_flags(source_path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("cannot open {}", source_path.display()))?;
    source.busy_timeout(std::time::Duration::from_secs(30))?;
    let partial = partial_path(to);
    let _ = std::fs::remove_file(&partial);
    let mut copy = Connection::open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let pages = {
        // One read transaction across all steps: every page comes from one snapshot.
        source.execute_batch("BEGIN")?;
        source.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        let backup = Backup::new(&source, &mut copy)?;
        loop {
            let step = backup.step(PAGES_PER_STEP)?;
            let p = backup.progress();
            let total = p.pagecount.max(0) as u64;
            progress(Progress {
                pages_done: total - p.remaining.max(0) as u64,
                pages_total: total,
            });
            match step {
                StepResult::Done => break total,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => bail!("backup stopped: unexpected SQLite step result"),
            }
        }
    };
    source.execute_batch("COMMIT")?;
    drop(copy);
    check(&partial)
        .with_context(|| format!("the backup {} failed its check", partial.display()))?;
    File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, to)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), to.display()))?;
    sync_parent(to)?;
    Ok(pages)
}

/// Replaces the database of the stopped metad data directory `dir` with backup `from`.
/// The database it replaces (with its WAL) is kept beside it as `meta.db.before-restore-*`.
/// Returns where the old database went, if there was one.
pub fn restore(dir: &Path, from: &Path) -> anyhow::Result<Option<PathBuf>> {
    check(from).with_context(|| format!("{} is not a usable metad backup", from.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = lock_data_dir(dir)?;
    let target = dir.join(DATABASE);
    let partial = partial_path(&target);
    std::fs::copy(from, &partial)
        .with_context(|| format!("cannot copy {} to {}", from.display(), partial.display()))?;
    File::open(&partial)?.sync_all()?;
    let kept = if target.exists() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = dir.join(format!("{DATABASE}.before-restore-{stamp}"));
        for suffix in ["-wal", "-shm", ""] {
            let old = dir.join(format!("{DATABASE}{suffix}"));
            if old.exists() {
                let new = PathBuf::from(format!("{}{suffix}", aside.display()));
                std::fs::rename(&old, &new).with_context(|| {
                    format!("cannot move {} aside to {}", old.display(), new.display())
                })?;
            }
        }
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), target.display()))?;
    sync_parent(&target)?;
    Ok(kept)
}

/// Checks that `path` is an intact metad database this build can open.
fn check(path: &Path) -> anyhow::Result<()> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        bail!("integrity check: {verdict}");
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        bail!("not a metad database (no schema)");
    }
    if version > SCHEMA_VERSION {
        bail!("schema v{version} is newer than this build's v{SCHEMA_VERSION}");
    }
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", path.display()))
}

pub(crate) fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(parent)?.sync_all()?;
    Ok(())
}
