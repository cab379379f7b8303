//! The connection handshake: protocol version, service, and mutual proof of the cluster
//! secret.
//!
//! ```text
//! client -> server  8 bytes: "SHFS" | version: u16 BE | service: u8 | reserved: u8 (0)
//! server -> client  8 bytes: "SHFS" | version: u16 BE | status: u8  | reserved: u8 (0)
//!                   then, if status is 0: server nonce (32 bytes)
//! client -> server  client nonce (32 bytes) | client proof (32 bytes)
//! server -> client  verdict: u8 (0 accepted, 3 refused) | server proof (32 bytes, zero if
//!                   refused)
//! ```
//! `status` is 0 (go on), 1 (version mismatch) or 2 (service not offered here). A proof is
//! the BLAKE3 keyed hash, under the key derived from the cluster secret, of the sender's
//! role, the service and both nonces ([`ClusterKey::proof`]); the server checks the
//! client's before it reads any frame, and the client checks the server's before it sends
//! one. On a non-zero status or verdict the server closes the connection after replying.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;
use crate::auth::{ClusterKey, NONCE_LEN, PROOF_LEN, Role, nonce};

/// Version of the frame layout and of every message enum carried in it.
pub const PROTOCOL_VERSION: u16 = 33;

const MAGIC: &[u8; 4] = b"SHFS";
const STATUS_OK: u8 = 0;
const STATUS_VERSION: u8 = 1;
const STATUS_SERVICE: u8 = 2;
const STATUS_REFUSED: u8 = 3;

/// How a TLS record starts (content type, then major version 3): a handshake record is what
/// a TLS client opens with, an alert what a TLS server answers plain bytes with.
const TLS_HANDSHAKE: [u8; 2] = [0x16, 0x03];
const TLS_ALERT: [u8; 2] = [0x15, 0x03];

/// A connection, over TLS or not.
pub trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<S: AsyncRead + AsyncWrite + Unpin> Stream for S {}

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
    /// metad replicas of one group, talking consensus to each other.
    Replication,
}

impl Service {
    fn code(self) -> u8 {
        match self {
            Service::Metad => 1,
            Service::Membership => 2,
            Service::Chunkd => 3,
            Service::Replication => 4,
        }
    }

    fn from_code(code: u8) -> Option<Service> {
        match code {
            1 => Some(Service::Metad),
            2 => Some(Service::Membership),
            3 => Some(Service::Chunkd),
            4 => Some(Service::Replication),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Metad => "metad",
            Service::Membership => "membership",
            Service::Chunkd => "chunkd",
            Service::Replication => "replication",
        }
    }
}

/// Client side: announce `service`, check the server's answer, and prove with `key` that
/// this side holds the cluster secret while checking that the server does.
pub async fn client(
    stream: &mut impl Stream,
    addr: &str,
    service: Service,
    key: &ClusterKey,
) -> Result<(), Error> {
    let mut hello = [0u8; 8];
    hello[..4].copy_from_slice(MAGIC);
    hello[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    hello[6] = service.code();
    let not_shardfs = || Error::NotShardfs { addr: addr.to_owned() };
    let exchange = async {
        stream.write_all(&hello).await?;
        let mut answer = [0u8; 8];
        let mut got = 0;
        while got < answer.len() {
            match stream.read(&mut answer[got..]).await? {
                0 => break,
                n => got += n,
            }
        }
        Ok::<_, std::io::Error>((answer, got))
    };
    let answer = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
        Ok(Ok((answer, got))) if got >= 2 && answer[..2] == TLS_ALERT => {
            return Err(Error::TlsExpected { addr: addr.to_owned() });
        }
        Ok(Ok((answer, 8))) => answer,
        Ok(_) | Err(_) => return Err(not_shardfs()),
    };
    if &answer[..4] != MAGIC {
        return Err(not_shardfs());
    }
    let theirs = u16::from_be_bytes([answer[4], answer[5]]);
    match answer[6] {
        STATUS_OK => {}
        STATUS_SERVICE => {
            return Err(Error::WrongService { addr: addr.to_owned(), service: service.name() });
        }
        _ => {
            return Err(Error::VersionMismatch {
                addr: addr.to_owned(),
                theirs,
                ours: PROTOCOL_VERSION,
            });
        }
    }
    let client_nonce = nonce();
    let proving = async {
        let mut server_nonce = [0u8; NONCE_LEN];
        stream.read_exact(&mut server_nonce).await?;
        let mut reply = [0u8; NONCE_LEN + PROOF_LEN];
        reply[..NONCE_LEN].copy_from_slice(&client_nonce);
        reply[NONCE_LEN..].copy_from_slice(&key.proof(
            Role::Client,
            service.code(),
            &server_nonce,
            &client_nonce,
        ));
        stream.write_all(&reply).await?;
        let mut verdict = [0u8; 1 + PROOF_LEN];
        stream.read_exact(&mut verdict).await?;
        Ok::<_, std::io::Error>((server_nonce, verdict))
    };
    let (server_nonce, verdict) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, proving).await {
        Ok(Ok(exchanged)) => exchanged,
        Ok(Err(_)) | Err(_) => return Err(not_shardfs()),
    };
    if verdict[0] != STATUS_OK {
        return Err(Error::AuthRefused { addr: addr.to_owned() });
    }
    let proof: &[u8; PROOF_LEN] = verdict[1..].try_into().expect("proof length");
    if !key.verify(proof, Role::Server, service.code(), &server_nonce, &client_nonce) {
        return Err(Error::AuthServer { addr: addr.to_owned() });
    }
    Ok(())
}

/// Server side: read the client's hello, answer it, check the client's proof of the
/// cluster secret and prove this side's; returns the service asked for if `offers` accepts
/// it. The whole exchange must finish within [`HANDSHAKE_TIMEOUT`].
pub async fn server(
    stream: &mut impl Stream,
    offers: impl Fn(Service) -> bool,
    key: &ClusterKey,
) -> Result<Service, Error> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange(stream, offers, key))
        .await
        .map_err(|_| Error::BadFrame("handshake timed out".into()))?
}

async fn exchange(
    stream: &mut impl Stream,
    offers: impl Fn(Service) -> bool,
    key: &ClusterKey,
) -> Result<Service, Error> {
    let mut hello = [0u8; 8];
    stream.read_exact(&mut hello).await?;
    if hello[..2] == TLS_HANDSHAKE {
        return Err(Error::BadFrame(
            "peer opened TLS, but this daemon serves without it (no --tls-cert)".into(),
        ));
    }
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
    let server_nonce = nonce();
    let mut answer = [0u8; 8 + NONCE_LEN];
    answer[..4].copy_from_slice(MAGIC);
    answer[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    answer[6] = status;
    answer[8..].copy_from_slice(&server_nonce);
    let service = match (status, service) {
        (STATUS_OK, Some(service)) => service,
        (STATUS_VERSION, _) => {
            stream.write_all(&answer[..8]).await?;
            return Err(Error::BadFrame(format!(
                "peer speaks protocol v{theirs}, this build speaks v{PROTOCOL_VERSION}"
            )));
        }
        _ => {
            stream.write_all(&answer[..8]).await?;
            return Err(Error::BadFrame(format!("peer asked for unknown service {}", hello[6])));
        }
    };
    stream.write_all(&answer).await?;
    let mut reply = [0u8; NONCE_LEN + PROOF_LEN];
    stream.read_exact(&mut reply).await?;
    let client_nonce: &[u8; NONCE_LEN] = reply[..NONCE_LEN].try_into().expect("nonce length");
    let proof: &[u8; PROOF_LEN] = reply[NONCE_LEN..].try_into().expect("proof length");
    let mut verdict = [0u8; 1 + PROOF_LEN];
    if !key.verify(proof, Role::Client, service.code(), &server_nonce, client_nonce) {
        verdict[0] = STATUS_REFUSED;
        stream.write_all(&verdict).await?;
        return Err(Error::AuthFailed);
    }
    verdict[1..].copy_from_slice(&key.proof(
        Role::Server,
        service.code(),
        &server_nonce,
        client_nonce,
    ));
    stream.write_all(&verdict).await?;
    Ok(service)
}
