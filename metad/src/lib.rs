//! shardfs metadata daemon: the namespace (inodes, directories, symlinks, xattrs), file
//! layouts, the chunk catalogue with placement, and the chunkd registry, kept in SQLite.
//!
//! `proto` and `client` are what other crates use; the rest is the daemon.

pub mod client;
pub mod daemon;
pub mod fair;
pub mod gc;
pub mod intents;
pub mod leases;
pub mod locks;
pub mod members;
pub mod placement;
pub mod proto;
pub mod repair;
pub mod requests;
pub mod server;
pub mod sessions;
pub mod store;

pub use client::{MetaClient, MetaClientError, SessionEvents};
pub mod access;
pub mod acl;
pub mod backup;
