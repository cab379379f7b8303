//! What permission checks read: the database as the store answers it now, or as a
//! transaction sees it partway through a mount's batch of changes (`batch.rs`), where each
//! change is checked against the state the changes before it left.

use rusqlite::Connection;

use super::{Store, get_attr, namespace, xattr};
use shardfs_meta_api::proto::{Attr, Ino, MetaError};

/// The reads a permission check makes.
pub trait View {
    fn get_attr(&self, ino: Ino) -> Result<Attr, MetaError>;
    /// `NoData` if the inode has no such attribute.
    fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MetaError>;
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, MetaError>;
}

impl View for Store {
    fn get_attr(&self, ino: Ino) -> Result<Attr, MetaError> {
        Store::get_attr(self, ino)
    }

    fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        Store::get_xattr(self, ino, name)
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, MetaError> {
        Store::lookup(self, parent, name)
    }
}

impl View for Connection {
    fn get_attr(&self, ino: Ino) -> Result<Attr, MetaError> {
        get_attr(self, ino)
    }

    fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        xattr::get(self, ino, name)
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, MetaError> {
        namespace::lookup(self, parent, name)
    }
}
