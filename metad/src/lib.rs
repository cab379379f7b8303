//! shardfs metadata daemon: the namespace (inodes, directories, symlinks, xattrs), file
//! layouts, the chunk catalogue with placement, and the chunkd registry, kept in SQLite.
//!
//! What clients share with it (the protocol and its client) is `shardfs-meta-api`.

pub mod daemon;
pub mod fair;
pub mod gc;
pub mod grace;
pub mod intents;
pub mod leases;
pub mod lifecycle;
pub mod locks;
pub mod members;
pub mod placement;
pub mod repair;
pub mod replication;
pub mod requests;
pub mod server;
pub mod sessions;
pub mod store;

pub mod access;
pub use shardfs_meta_api::acl;
pub mod backup;
