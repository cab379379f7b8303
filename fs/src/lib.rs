//! The shardfs filesystem client: every file operation over metad and the chunkds
//! ([`core`]), and its adapter to the kernel through FUSE ([`fuse`], [`mount`]). The
//! command-line tools that use it are the `shardfs` crate (`cli/`).

pub mod chunk_io;
pub mod core;
pub mod dirty;
pub mod error;
pub mod fuse;
pub mod journal;
pub mod leases;
pub mod metrics;
pub mod mount;
pub mod mount_record;
pub mod mountinfo;
pub mod options;
pub mod seek;
pub mod setid;
pub mod write_back;
