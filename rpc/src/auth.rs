//! The cluster secret, and the proofs by which both ends of a connection show they hold it.
//!
//! The secret is a file (created once at cluster setup, mode 0600) copied to every host of
//! the cluster. Its content never travels: each side sends BLAKE3 keyed hashes of the
//! handshake's two fresh nonces under a key derived from it (see [`crate::handshake`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Random bytes each side contributes to a handshake.
pub const NONCE_LEN: usize = 32;
/// Length of a proof: a BLAKE3 hash.
pub const PROOF_LEN: usize = 32;

/// Shortest secret file accepted, in bytes.
const MIN_SECRET_LEN: usize = 32;
/// Largest secret file read.
const MAX_SECRET_LEN: usize = 4096;
/// BLAKE3 key-derivation context: the key proves nothing outside this protocol.
const KEY_CONTEXT: &str = "shardfs 2026-11 cluster connection authentication v1";

/// Which end of a connection a proof comes from, so one end's proof is never valid as the
/// other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// The key every connection of a cluster is authenticated with.
#[derive(Clone, Copy)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the cluster secret {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the cluster secret {path} may be read by other users (mode {mode:04o}); \
         run: chmod 600 {path}"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the cluster secret {path} holds {len} bytes; at least {MIN_SECRET_LEN} are needed")]
    TooShort { path: PathBuf, len: usize },
    #[error("cannot create the cluster secret {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
}

impl ClusterKey {
    /// Derives the key from a secret's bytes.
    pub fn from_secret(secret: &[u8]) -> ClusterKey {
        ClusterKey(blake3::derive_key(KEY_CONTEXT, secret))
    }

    /// Reads the secret file at `path`, which only its owner may read.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let read = |source| KeyError::Read { path: path.to_owned(), source };
        let file = File::open(path).map_err(read)?;
        let mode = file.metadata().map_err(read)?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen { path: path.to_owned(), mode });
        }
        let mut secret = Vec::new();
        file.take(MAX_SECRET_LEN as u64).read_to_end(&mut secret).map_err(read)?;
        let trimmed = secret.trim_ascii();
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort { path: path.to_owned(), len: trimmed.len() });
        }
        Ok(ClusterKey::from_secret(trimmed))
    }

    /// Writes a new random secret to `path` (mode 0600), failing if the file exists.
    pub fn create(path: &Path) -> Result<ClusterKey, KeyError> {
        let create = |source| KeyError::Create { path: path.to_owned(), source };
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create)?;
        file.write_all(format!("{secret}\n").as_bytes()).map_err(create)?;
        file.sync_all().map_err(create)?;
        Ok(ClusterKey::from_secret(secret.as_bytes()))
    }

    /// [`load`](Self::load)s the secret at `path`, first [`create`](Self::create)ing it if no
    /// file is there.
    pub fn load_or_create(path: &Path) -> Result<ClusterKey, KeyError> {
        match ClusterKey::create(path) {
            Ok(key) => Ok(key),
            Err(KeyError::Create { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                ClusterKey::load(path)
            }
            Err(e) => Err(e),
        }
    }

    /// What `role` sends to prove it holds the key, for one handshake.
    pub fn proof(
        &self,
        role: Role,
        service: u8,
        server_nonce: &[u8; NONCE_LEN],
        client_nonce: &[u8; NONCE_LEN],
    ) -> [u8; PROOF_LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(match role {
            Role::Client => b"client",
            Role::Server => b"server",
        });
        hasher.update(&[service]);
        hasher.update(server_nonce);
        hasher.update(client_nonce);
        *hasher.finalize().as_bytes()
    }

    /// Whether `proof` is what `role` would send, compared in constant time.
    pub fn verify(
        &self,
        proof: &[u8; PROOF_LEN],
        role: Role,
        service: u8,
        server_nonce: &[u8; NONCE_LEN],
        client_nonce: &[u8; NONCE_LEN],
    ) -> bool {
        let expected = blake3::Hash::from(self.proof(role, service, server_nonce, client_nonce));
        expected == blake3::Hash::from(*proof)
    }
}

/// A fresh nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

/// What a daemon proves and checks on every connection it accepts or opens: the cluster
/// key and, if configured, TLS.
#[derive(Clone, Copy, Debug)]
pub struct DaemonAuth {
    pub key: ClusterKey,
    pub tls: Option<crate::DaemonTls>,
}

impl DaemonAuth {
    /// The key alone, over plain TCP.
    pub fn new(key: ClusterKey) -> DaemonAuth {
        DaemonAuth { key, tls: None }
    }

    /// How to serve: the key, TLS, and the default limits.
    pub fn server_config(&self) -> crate::ServerConfig {
        crate::ServerConfig {
            tls: self.tls.map(|t| t.server),
            ..crate::ServerConfig::new(self.key)
        }
    }

    /// How to connect to other daemons: the key, TLS, and the default timeouts.
    pub fn client_options(&self) -> crate::ClientOptions {
        crate::ClientOptions {
            tls: self.tls.map(|t| t.client),
            ..crate::ClientOptions::with_key(self.key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_key_role_service_and_both_nonces() {
        let key = ClusterKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let (s, c) = (nonce(), nonce());
        let proof = key.proof(Role::Client, 1, &s, &c);
        assert!(key.verify(&proof, Role::Client, 1, &s, &c));
        assert!(!key.verify(&proof, Role::Server, 1, &s, &c), "a client proof is not a server's");
        assert!(!key.verify(&proof, Role::Client, 2, &s, &c), "bound to the service");
        assert!(!key.verify(&proof, Role::Client, 1, &c, &s), "bound to the nonces");
        let other = ClusterKey::from_secret(b"0123456789abcdef0123456789abcdeF");
        assert!(!other.verify(&proof, Role::Client, 1, &s, &c), "bound to the key");
    }

    #[test]
    fn secret_files_are_created_private_and_refused_when_open_or_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let created = ClusterKey::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let (s, c) = (nonce(), nonce());
        let loaded = ClusterKey::load_or_create(&path).unwrap();
        assert_eq!(loaded.proof(Role::Server, 3, &s, &c), created.proof(Role::Server, 3, &s, &c));
        assert!(matches!(ClusterKey::create(&path), Err(KeyError::Create { .. })));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let open = ClusterKey::load(&path).unwrap_err();
        assert!(open.to_string().contains("chmod 600"), "{open}");
        let short = dir.path().join("short.key");
        std::fs::write(&short, "tiny\n").unwrap();
        std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert!(matches!(ClusterKey::load(&short), Err(KeyError::TooShort { len: 4, .. })));
        let missing = ClusterKey::load(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("cannot read the cluster secret"), "{missing}");
    }
}
