//! What talks to metad, shared by the client, the tools, chunkd and metad itself.
//!
//! - [`proto`]: the `Metad` wire protocol: inodes, attributes, layouts, replies, errors.
//! - [`acl`]: POSIX ACLs in their xattr form, and how they tie to mode bits.
//! - [`class_policy`]: a file's storage class policy, in its xattr.
//! - [`file_flags`]: file attribute flags (`chattr`), project id and extent size hint.
//! - [`requests`]: the requests, one enum per family of operations.
//! - [`fsck`]: what a metadata check reports.
//! - [`client`]: the typed client, with its session, heartbeats and pushed recalls.

pub mod acl;
pub mod class_policy;
pub mod client;
pub mod file_flags;
pub mod fsck;
pub mod proto;
pub mod requests;

pub use client::{Barrier, MetaClient, MetaClientError, SessionEvents, Ticket};
