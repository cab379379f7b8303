//! The integration suite: real metad and chunkd processes on loopback and real FUSE mounts,
//! driven with syscalls and shell tools. One test binary, one module per area (each area's
//! module says what it covers), so the suite links metad, chunkd and their dependencies once.

mod attr_flags;
mod auth;
mod backup;
mod bad_setup;
mod batches;
mod bench;
mod big_directory;
mod classes;
mod commands;
mod core;
mod crash;
mod dedup;
mod degraded;
mod drain;
mod durability;
mod exhaustion;
mod fsck;
mod gc;
mod hostile_frames;
mod inline;
mod leases;
mod locks;
mod metrics;
mod permissions;
mod posix;
mod replication;
mod sessions;
mod shell_tools;
mod shutdown;
mod status;
mod tls;
