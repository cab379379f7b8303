//! Durable file-system primitives: a file or directory entry exists after a crash only once
//! its contents and every directory entry leading to it have been fsync'd.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Flushes a directory's entries (created, renamed or removed names) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, fsyncing the parent of each directory created so
/// that the new entries survive a crash.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        // A concurrent put into a sibling shard created it first; that put syncs the parent.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match parent {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// A unique name in `tmp_dir` for a temp file that will become `final_name`.
pub fn temp_path(tmp_dir: &Path, final_name: &str) -> PathBuf {
    tmp_dir.join(format!("{final_name}.{:016x}.tmp", rand::random::<u64>()))
}

/// Writes `parts` to `target` so that after a crash `target` holds either its old contents
/// or all of the new ones: temp file in `tmp_dir`, fsync, rename, fsync of the target's
/// directory. `target`'s directory must exist.
pub fn write_durable(tmp_dir: &Path, target: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = temp_path(tmp_dir, name);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)?;
        match target.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is also removed on the next start.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes every file left in `tmp_dir` by writes a crash interrupted.
pub fn clean_tmp(tmp_dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(tmp_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(tmp_dir)?;
    }
    Ok(removed)
}

/// Whether an error means the disk (or quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_durable_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        create_dir_durable(&tmp).unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_durable(&nested).unwrap();
        let target = nested.join("f");
        write_durable(&tmp, &target, &[b"he", b"llo"]).unwrap();
        write_durable(&tmp, &target, &[b"bye"]).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"bye");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        fs::write(tmp.join("stale"), b"x").unwrap();
        assert_eq!(clean_tmp(&tmp).unwrap(), 1);
    }
}
