//! What a tool needs to reach a mount's cluster, left by the mount while it serves: metad's
//! address and the files holding the cluster secret and TLS CA. `shardfs info FILE` finds it
//! through the mount holding FILE, so it needs neither `--metad` nor `--secret-file`.
//!
//! One small JSON file per mount point, in `/run/shardfs` (root) or
//! `$XDG_RUNTIME_DIR/shardfs` (other users), removed when the mount stops serving. It
//! names files only: the secret itself stays where it was.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
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
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(&partial, &path)?;
    Ok(Recorded(path))
}

/// The record the mount at `mountpoint` left, if it is serving.
pub fn find(mountpoint: &Path) -> Option<MountRecord> {
    serde_json::from_slice(&std::fs::read(path_of(mountpoint)).ok()?).ok()
}
