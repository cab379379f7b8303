//! The connection handshake.
//!
//! ```text
//! client -> server  8 bytes: "SHFS" | version: u16 BE | service: u8 | reserved: u8 (0)
//! server -> client  8 bytes: "SHFS" | version: u16 BE | status: u8  | reserved: u8 (0)
//! ```
//! `status` is 0 (accepted), 1 (version mismatch) or 2 (service not offered here). On a
//! non-zero status the server closes the connection after its reply.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Error;

/// Version of the frame layout and of every message enum carried in it.
pub const PROTOCOL_VERSION: u16 = 16;

const MAGIC: &[u8; 4] = b"SHFS";
const STATUS_OK: u8 = 0;
const STATUS_VERSION: u8 = 1;
const STATUS_SERVICE: u8 = 2;

/// A peer must finish its handshake within this time or be dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which protocol a connection speaks, chosen by the connecting side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Clients (mounts, CLI) talking to metad.
    Metad,
    /// chunkd registering and heart-beating with metad.
    Membership,
    /// Anyone reading or writing shards on a chunkd.
    Chunkd,
}

impl Service {
    fn code(self) -> u8 {
        match self {
            Service::Metad => 1,
            Service::Membership => 2,
            Service::Chunkd => 3,
        }
    }

    fn from_code(code: u8) -> Option<Service> {
        match code {
            1 => Some(Service::Metad),
            2 => Some(Service::Membership),
            3 => Some(Service::Chunkd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Metad => "metad",
            Service::Membership => "membership",
            Service::Chunkd => "chunkd",
        }
    }
}

/// Client side: announce `service` and check the server's answer.
pub async fn client(stream: &mut TcpStream, addr: &str, service: Service) -> Result<(), Error> {
    let mut hello = [0u8; 8];
    hello[..4].copy_from_slice(MAGIC);
    hello[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    hello[6] = service.code();
    let exchange = async {
        stream.write_all(&hello).await?;
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => {
            return Err(Error::NotShardfs { addr: addr.to_owned() });
        }
    };
    if &answer[..4] != MAGIC {
        return Err(Error::NotShardfs { addr: addr.to_owned() });
    }
    let theirs = u16::from_be_bytes([answer[4], answer[5]]);
    match answer[6] {
        STATUS_OK => Ok(()),
        STATUS_SERVICE => {
            Err(Error::WrongService { addr: addr.to_owned(), service: service.name() })
        }
        _ => Err(Error::VersionMismatch { addr: addr.to_owned(), theirs, ours: PROTOCOL_VERSION }),
    }
}

/// Server side: read the client's hello, answer it, and return the service it asked for if
/// `offers` accepts it.
pub async fn server(
    stream: &mut TcpStream,
    offers: impl Fn(Service) -> bool,
) -> Result<Service, Error> {
    let mut hello = [0u8; 8];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut hello))
        .await
        .map_err(|_| Error::BadFrame("handshake timed out".into()))??;
    if &hello[..4] != MAGIC {
        return Err(Error::BadFrame("peer is not speaking the shardfs protocol".into()));
    }
    let theirs = u16::from_be_bytes([hello[4], hello[5]]);
    let service = Service::from_code(hello[6]).filter(|s| offers(*s));
    let status = if theirs != PROTOCOL_VERSION {
        STATUS_VERSION
    } else if service.is_none() {
        STATUS_SERVICE
    } else {
        STATUS_OK
    };
    let mut answer = [0u8; 8];
    answer[..4].copy_from_slice(MAGIC);
    answer[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    answer[6] = status;
    stream.write_all(&answer).await?;
    match (status, service) {
        (STATUS_OK, Some(service)) => Ok(service),
        (STATUS_VERSION, _) => Err(Error::BadFrame(format!(
            "peer speaks protocol v{theirs}, this build speaks v{PROTOCOL_VERSION}"
        ))),
        _ => Err(Error::BadFrame(format!("peer asked for unknown service {}", hello[6]))),
    }
}
