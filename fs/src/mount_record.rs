//! What a tool needs to reach a mount's cluster, left by the mount while it serves: metad's
//! address and the files holding the cluster secret and TLS CA. `shardfs info FILE` finds it
//! through the mount holding FILE, so it needs neither `--metad` nor `--secret-file`.
//!
//! One small JSON file per mount point, in `/run/shardfs` (root) or
//! `$XDG_RUNTIME_DIR/shardfs` (other users), removed when the mount stops serving. It
//! names files only: the secret itself stays where it was. A mount that was killed leaves
//! its record behind; the next mount to start removes such stale ones.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Where the mount is (absent from records of older versions).
    #[serde(default)]
    pub mountpoint: PathBuf,
    pub metad: String,
    pub secret_file: PathBuf,
    pub tls_ca: Option<PathBuf>,
}

/// Where the record of the mount at `mountpoint` is kept.
fn path_of(mountpoint: &Path) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !nix::unistd::geteuid().is_root() => PathBuf::from(dir).join("shardfs"),
        _ => PathBuf::from("/run/shardfs"),
    };
    let name = mountpoint.to_string_lossy().trim_matches('/').replace('/', "-");
    dir.join(format!("mount-{name}.json"))
}

/// The record of a mount, removed when dropped.
pub struct Recorded(PathBuf);

impl Drop for Recorded {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Leaves `record` for the mount at `mountpoint` (an absolute path) while the result lives.
pub fn record(mountpoint: &Path, record: &MountRecord) -> std::io::Result<Recorded> {
    let path = path_of(mountpoint);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        remove_stale(dir);
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(&partial, &path)?;
    Ok(Recorded(path))
}

/// How old a record must be before it can be stale: a mount records itself just before it
/// mounts, and one starting beside this one must not lose its record meanwhile.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the records in `dir` of mounts that are gone (killed without cleaning up).
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > STALE_AFTER));
        let record = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<MountRecord>(&bytes).ok());
        let gone = record.is_some_and(|r| {
            !r.mountpoint.as_os_str().is_empty()
                && !crate::mount::is_mount_point(&r.mountpoint).unwrap_or(true)
        });
        if old && gone {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The record the mount at `mountpoint` left, if it is serving.
pub fn find(mountpoint: &Path) -> Option<MountRecord> {
    serde_json::from_slice(&std::fs::read(path_of(mountpoint)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of(mountpoint: &Path) -> MountRecord {
        let mountpoint = mountpoint.to_owned();
        MountRecord {
            mountpoint,
            metad: "127.0.0.1:1".into(),
            secret_file: "/k".into(),
            tls_ca: None,
        }
    }

    #[test]
    fn records_of_mounts_that_are_gone_are_removed_by_the_next_mount() {
        let (gone, recent, next) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        // A killed mount's record, older than a start-up takes; a newer one of a mount
        // that is still starting.
        std::mem::forget(record(gone.path(), &record_of(gone.path())).unwrap());
        let old = std::time::SystemTime::now() - STALE_AFTER * 2;
        std::fs::File::options()
            .write(true)
            .open(path_of(gone.path()))
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::mem::forget(record(recent.path(), &record_of(recent.path())).unwrap());
        let kept = record(next.path(), &record_of(next.path())).unwrap();
        assert_eq!(find(gone.path()), None, "the stale record is removed");
        assert_eq!(find(recent.path()), Some(record_of(recent.path())));
        assert_eq!(find(next.path()), Some(record_of(next.path())));
        drop(kept);
        assert_eq!(find(next.path()), None, "a mount's record goes with it");
        let _ = std::fs::remove_file(path_of(recent.path()));
    }
}
