//! What talks to metad, shared by the client, the tools, chunkd and metad itself.
//!
//! - [`proto`]: the `Metad` wire protocol: inodes, attributes, layouts, replies, errors.
//! - [`requests`]: the requests, one enum per family of operations.
//! - [`fsck`]: what a metadata check reports.
//! - [`client`]: the typed client, with its session, heartbeats and pushed recalls.

pub mod client;
pub mod fsck;
pub mod proto;
pub mod requests;

pub use client::{Barrier, MetaClient, MetaClientError, SessionEvents, Ticket};
