//! The shardfs wire transport, shared by every daemon and client.
//!
//! One TCP connection carries many concurrent requests. After a fixed-size handshake, in
//! which each side proves it holds the cluster secret (see [`handshake`], [`auth`]), both
//! sides exchange frames (see [`frame`]); each request frame carries
//! an id that its response echoes, so responses may come back in any order. Message bodies
//! are postcard-encoded enums owned by each daemon (`chunkd::proto`, `metad::proto`); this
//! crate only moves bytes and never interprets them.

pub mod auth;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
#[cfg(feature = "cli")]
pub mod config_file;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod metrics;
pub mod passes;
pub mod replicas;
pub mod server;
pub mod size;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod throttle;
pub mod tls;

pub use auth::{ClusterKey, DaemonAuth, KeyError};
pub use client::{Client, ClientOptions, Hello, PushHandler};
pub use error::Error;
pub use handshake::{PROTOCOL_VERSION, Service};
pub use replicas::Replicas;
pub use server::{Handler, Pusher, ServerConfig, serve};
#[cfg(feature = "cli")]
pub use tls::DaemonTlsArgs;
pub use tls::{DaemonTls, TlsClient, TlsError, TlsServer};

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use tokio::net::TcpStream;

/// TCP keepalive: probes start after this long without traffic, so a peer that vanished
/// without closing (a half-open connection) is noticed within about two minutes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// Socket options of every connection, either end: no Nagle delay for small requests, and
/// keepalive probes, so a connection to a vanished peer errors out instead of lasting
/// forever.
pub(crate) fn tune(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let probes = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&probes)
}

/// The two directions of a connection, over TLS or not.
pub(crate) struct Halves(
    pub Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
);

impl Halves {
    /// A plain TCP stream's, split without a lock between the halves.
    pub fn plain(stream: TcpStream) -> Halves {
        let (read, write) = stream.into_split();
        Halves(Box::new(read), Box::new(write))
    }

    /// Any other stream's (TLS).
    pub fn of<S>(stream: S) -> Halves
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        Halves(Box::new(read), Box::new(write))
    }
}

/// Encodes a message body.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising our own in-memory types into a Vec cannot fail: every type we send is a
    // plain tree of structs, enums, integers, strings and byte buffers.
    postcard::to_stdvec(message).expect("postcard encoding of a protocol message")
}

/// Decodes a message body, rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(Error::Decode)?;
    if !rest.is_empty() {
        return Err(Error::BadFrame(format!("{} trailing bytes after message", rest.len())));
    }
    Ok(value)
}
