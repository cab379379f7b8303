//! Room kept on metad's disk for the changes that free space. When the disk fills up,
//! changes that need room fail with ENOSPC (`MetaError::MetadataFull`), but unlink, rmdir,
//! truncation and the like must still go through, or the user could never make room. A
//! file of [`RESERVE_BYTES`] is kept beside the database; a change that frees space and
//! finds the disk full deletes it and tries again. It is made again once the disk has room
//! for it twice over.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Room kept back: thousands of deletions' worth of log pages.
pub const RESERVE_BYTES: u64 = 4 << 20;

/// The reserve file's name in the data directory.
const FILE_NAME: &str = "reserved-space";

pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    /// The reserve of the data directory `dir` (not made yet: see [`Reserve::replenish`]).
    pub fn new(dir: &Path) -> Reserve {
        Reserve { path: dir.join(FILE_NAME) }
    }

    /// Makes the reserve file if it is missing and the disk has room for it twice over;
    /// returns whether it made it.
    pub fn replenish(&self) -> std::io::Result<bool> {
        if self.path.exists() {
            return Ok(false);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let stat = nix::sys::statvfs::statvfs(dir)?;
        let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
        if free < 2 * RESERVE_BYTES {
            return Ok(false);
        }
        // Written out, not sparse: the blocks must really be taken.
        let partial = self.path.with_extension("partial");
        let mut file = std::fs::File::create(&partial)?;
        let block = vec![0u8; 64 << 10];
        for _ in 0..RESERVE_BYTES / block.len() as u64 {
            file.write_all(&block)?;
        }
        file.sync_all()?;
        std::fs::rename(&partial, &self.path)?;
        Ok(true)
    }

    /// Gives the reserved room back to the disk; returns whether there was any.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path());
        assert!(!reserve.release());
        assert!(reserve.replenish().unwrap());
        assert_eq!(std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(), RESERVE_BYTES);
        assert!(!reserve.replenish().unwrap());
        assert!(reserve.release());
        assert!(!reserve.release());
    }
}
