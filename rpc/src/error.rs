//! Transport errors. Application errors travel inside response bodies instead.

use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out after {timeout:?} connecting to {addr}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("{addr} did not answer the shardfs handshake (is it a shardfs daemon?)")]
    NotShardfs { addr: String },
    #[error("{addr} expects TLS: give the cluster's CA with --tls-ca")]
    TlsExpected { addr: String },
    #[error(
        "TLS with {addr} failed: {reason} (is --tls-ca the cluster's CA, and does the daemon's \
         certificate name the host dialled?)"
    )]
    Tls { addr: String, reason: String },
    #[error(
        "protocol version mismatch with {addr}: it speaks v{theirs}, this build speaks v{ours}"
    )]
    VersionMismatch { addr: String, theirs: u16, ours: u16 },
    #[error("no cluster secret configured for connecting to {addr} (give --secret-file)")]
    NoKey { addr: String },
    #[error("{addr} refused this process's cluster secret (is --secret-file the cluster's key?)")]
    AuthRefused { addr: String },
    #[error("{addr} could not prove it holds the cluster secret; not talking to it")]
    AuthServer { addr: String },
    #[error("peer did not prove it holds the cluster secret (wrong or missing key file)")]
    AuthFailed,
    #[error("{addr} does not serve the {service} protocol")]
    WrongService { addr: String, service: &'static str },
    #[error("connection to {addr} lost")]
    ConnectionLost { addr: String },
    #[error("request to {addr} timed out after {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("idle for {after:?} with no request in flight")]
    Idle { after: Duration },
    #[error("the peer took nothing off the connection for {after:?}")]
    WriteTimeout { after: Duration },
    #[error("malformed frame: {0}")]
    BadFrame(String),
    /// A replica that is not its group's leader; it names the leader if it knows one.
    #[error("{addr} is not the leader{}", leader.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader { addr: String, leader: Option<String> },
    /// No replica of a group answered as its leader within the failover time.
    #[error("no replica of {replicas} answered as the leader within {}s (last: {last})", within.as_secs())]
    NoLeader { replicas: String, within: std::time::Duration, last: String },
    #[error("cannot decode message: {0}")]
    Decode(postcard::Error),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}
