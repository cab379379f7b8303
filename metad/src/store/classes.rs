//! Storage classes in the namespace: the class a file's new data is written in, from its
//! class policy (`shardfs_meta_api::class_policy`).

use rusqlite::Connection;
use shardfs_chunk_api::Encoding;
use shardfs_meta_api::class_policy::{CLASS_XATTR, ClassPolicy};

use super::xattr::xattr_value;
use super::{Store, get_attr};
use shardfs_meta_api::proto::{Ino, MetaError};

impl Store {
    /// The class new data of file `ino` is written in. A file not made yet (its making is
    /// still in a mount's queue of batched changes, which placement does not wait for) is
    /// written in the hot class; the lifecycle later moves it where its policy says.
    pub fn write_class(&self, ino: Ino) -> Result<Encoding, MetaError> {
        let volume = self.settings();
        self.read(|tx| {
            let policy = match get_attr(tx, ino) {
                Ok(_) => policy(tx, ino)?,
                Err(MetaError::NotFound) => None,
                Err(e) => return Err(e),
            };
            Ok(ClassPolicy::write_class(policy, volume.hot, volume.cold))
        })
    }
}

/// The class policy `ino` states, if any.
pub(super) fn policy(tx: &Connection, ino: Ino) -> Result<Option<ClassPolicy>, MetaError> {
    Ok(xattr_value(tx, ino, CLASS_XATTR)?.and_then(|value| ClassPolicy::from_xattr(&value)))
}

/// Checks a value about to be set as `CLASS_XATTR`.
pub(super) fn validate_policy(value: &[u8]) -> Result<(), MetaError> {
    match ClassPolicy::from_xattr(value) {
        Some(_) => Ok(()),
        None => Err(MetaError::Invalid(format!(
            "{:?} is not a class policy: write hot, cold, replicas(3), rs(4,2) or lrc(6,2,2)",
            String::from_utf8_lossy(value)
        ))),
    }
}
