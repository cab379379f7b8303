//! The shardfs wire transport, shared by every daemon and client.
//!
//! One TCP connection carries many concurrent requests. After a fixed-size handshake
//! (see [`handshake`]) both sides exchange frames (see [`frame`]); each request frame carries
//! an id that its response echoes, so responses may come back in any order. Message bodies
//! are postcard-encoded enums owned by each daemon (`chunkd::proto`, `metad::proto`); this
//! crate only moves bytes and never interprets them.

pub mod client;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod server;

pub use client::{Client, ClientOptions, Hello, PushHandler};
pub use error::Error;
pub use handshake::{PROTOCOL_VERSION, Service};
pub use server::{Handler, Pusher, serve};

use serde::{Serialize, de::DeserializeOwned};

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
