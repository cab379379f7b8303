//! shardfs client: the FUSE filesystem and the `shardfs` command line.

pub mod bench;
pub mod chunk_io;
pub mod core;
pub mod dirty;
pub mod error;
pub mod fsck;
pub mod fuse;
pub mod info;
pub mod install;
pub mod leases;
pub mod local;
pub mod metrics;
pub mod mount;
pub mod mount_record;
pub mod options;
pub mod progress;
pub mod seek;
pub mod setid;
pub mod status;
pub mod write_back;
