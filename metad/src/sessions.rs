//! Client sessions. A mount opens a session when it connects and resumes it after a
//! reconnect; the open files, locks and write intents it holds belong to the session, not
//! to one TCP connection. A session heard from neither by a request nor a heartbeat for
//! `timeout` expires, and only then is what it held released, so a client that loses its
//! connection for a moment keeps its locks, while one that died loses them after a bounded
//! wait.
//!
//! Connections that never open a session (tools: fsck, status) get an implicit one that
//! ends with the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::Holder;
use shardfs_rpc::sync::Lock as _;

/// How long a silent session lives when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a closed connection meant for the session it acted for.
#[derive(Debug, PartialEq, Eq)]
pub enum Departed {
    /// An implicit session (a tool's): it ended with its connection.
    Ended(Holder),
    /// A mount's session: it lives on until it resumes on a new connection or expires.
    Detached(Holder),
}

/// What one session may hold, so one client cannot exhaust metad's memory for the others.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Silence after which a session expires and what it held is released.
    pub timeout: Duration,
    /// Opens held at once; one more is refused (`TooManyOpenFiles`, ENFILE).
    pub open_files: u64,
    /// Leases held at once; past it, the oldest are recalled (see `crate::leases`).
    pub leases: usize,
    /// Chunks prepared for writes and not yet committed (write intents, `crate::intents`);
    /// a prepare past it is refused.
    pub prepared_chunks: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            timeout: DEFAULT_TIMEOUT,
            open_files: 1 << 20,
            leases: 1 << 18,
            // 256 GiB of 4 MiB chunks: far beyond what a client buffers between a prepare
            // and its commit.
            prepared_chunks: 1 << 16,
        }
    }
}

struct Session {
    /// The host the client said it runs on, for status and logs.
    host: String,
    /// Opened by the client (expires after the timeout), or implicit (ends with its
    /// connection).
    explicit: bool,
    last_seen: Instant,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<Holder, Session>,
    by_peer: HashMap<SocketAddr, Holder>,
    next: Holder,
}

pub struct Sessions {
    table: Mutex<Table>,
    limits: SessionLimits,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        // Ids start from the clock so a client resuming a session of an earlier metad run
        // cannot take over a new session by accident.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        Sessions { table: Mutex::new(Table { next: seed, ..Table::default() }), limits }
    }

    /// Puts back the mounts' sessions the previous run recorded, as if just heard from: each
    /// may resume, or expires after the timeout like any silent session.
    pub fn restore(&self, sessions: Vec<(Holder, String)>) {
        let mut table = self.lock();
        for (id, host) in sessions {
            table.sessions.insert(id, Session { host, explicit: true, last_seen: Instant::now() });
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    pub fn timeout(&self) -> Duration {
        self.limits.timeout
    }

    /// Sessions opened by clients (mounts), not the implicit ones of tools.
    pub fn mounts(&self) -> u64 {
        self.lock().sessions.values().filter(|s| s.explicit).count() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.locked()
    }

    /// The session requests from `peer` act for, refreshed; an implicit one if the
    /// connection opened none.
    pub fn of(&self, peer: SocketAddr) -> Holder {
        let mut table = self.lock();
        if let Some(&id) = table.by_peer.get(&peer)
            && let Some(session) = table.sessions.get_mut(&id)
        {
            session.last_seen = Instant::now();
            return id;
        }
        let id = table.new_id();
        let session =
            Session { host: peer.to_string(), explicit: false, last_seen: Instant::now() };
        table.sessions.insert(id, session);
        table.by_peer.insert(peer, id);
        id
    }

    /// Opens a session for the client on `peer`, or resumes `resume` if it has not
    /// expired. Returns the session's id, and the implicit session the connection had until
    /// now, which ends here (its holdings are for the caller to release).
    pub fn open(
        &self,
        peer: SocketAddr,
        host: String,
        resume: Option<Holder>,
    ) -> (Holder, Option<Holder>) {
        let mut table = self.lock();
        let id = match resume.filter(|id| table.sessions.get(id).is_some_and(|s| s.explicit)) {
            Some(id) => id,
            None => table.new_id(),
        };
        table.sessions.insert(id, Session { host, explicit: true, last_seen: Instant::now() });
        let replaced = table
            .by_peer
            .insert(peer, id)
            .filter(|old| *old != id && table.sessions.get(old).is_some_and(|s| !s.explicit));
        if let Some(old) = replaced {
            table.sessions.remove(&old);
        }
        (id, replaced)
    }

    /// Whether session `id` is still open (connected, or a mount's that may resume).
    pub fn exists(&self, id: Holder) -> bool {
        self.lock().sessions.contains_key(&id)
    }

    /// The connection session `id` acts through now, if it is connected.
    pub fn peer_of(&self, id: Holder) -> Option<SocketAddr> {
        self.lock().by_peer.iter().find(|(_, holder)| **holder == id).map(|(peer, _)| *peer)
    }

    /// Whether `id` is a session a client opened (and that has not expired).
    pub fn is_explicit(&self, id: Holder) -> bool {
        self.lock().sessions.get(&id).is_some_and(|s| s.explicit)
    }

    /// The connection from `peer` ended. Returns an implicit session to release now;
    /// an explicit one waits for its client to come back or for expiry.
    pub fn disconnected(&self, peer: SocketAddr) -> Option<Departed> {
        let mut table = self.lock();
        let id = table.by_peer.remove(&peer)?;
        if table.sessions.get(&id).is_some_and(|s| !s.explicit) {
            table.sessions.remove(&id);
            return Some(Departed::Ended(id));
        }
        Some(Departed::Detached(id))
    }

    /// Ends the session the connection from `peer` acts for (its holdings are for the
    /// caller to release); the connection falls back to an implicit session.
    pub fn close(&self, peer: SocketAddr) -> Option<Holder> {
        let mut table = self.lock();
        let id = table.by_peer.remove(&peer)?;
        table.sessions.remove(&id);
        Some(id)
    }

    /// Removes and returns the explicit sessions silent for longer than the timeout, with
    /// the host each said it runs on.
    pub fn expire(&self) -> Vec<(Holder, String)> {
        let mut table = self.lock();
        let timeout = self.limits.timeout;
        let expired: Vec<Holder> = table
            .sessions
            .iter()
            .filter(|(_, s)| s.explicit && s.last_seen.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        table.by_peer.retain(|_, id| !expired.contains(id));
        expired
            .into_iter()
            .filter_map(|id| table.sessions.remove(&id).map(|s| (id, s.host)))
            .collect()
    }
}

impl Table {
    fn new_id(&mut self) -> Holder {
        self.next = self.next.wrapping_add(2);
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_sessions_outlive_connections_until_they_expire() {
        let limits = SessionLimits { timeout: Duration::from_millis(50), ..Default::default() };
        let sessions = Sessions::new(limits);
        let (a, b): (SocketAddr, SocketAddr) =
            ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        // The first request made an implicit session, which opening one replaces.
        let implicit = sessions.of(a);
        let (id, replaced) = sessions.open(a, "host-a".into(), None);
        assert_eq!(replaced, Some(implicit));
        assert_eq!(sessions.of(a), id);
        // The connection drops; the client comes back on another one and resumes.
        assert_eq!(sessions.disconnected(a), Some(Departed::Detached(id)));
        assert_eq!(sessions.open(b, "host-a".into(), Some(id)), (id, None));
        assert!(sessions.is_explicit(sessions.of(b)));
        // Silent past the timeout: expired; the connection falls back to an implicit
        // session, and a resume attempt gets a new session.
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(sessions.expire(), vec![(id, "host-a".to_string())]);
        assert!(!sessions.is_explicit(sessions.of(b)));
        assert_ne!(sessions.open(b, "host-a".into(), Some(id)).0, id);
    }

    #[test]
    fn implicit_sessions_end_with_their_connection() {
        let limits = SessionLimits { timeout: Duration::from_millis(10), ..Default::default() };
        let sessions = Sessions::new(limits);
        let peer: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let id = sessions.of(peer);
        assert_eq!(sessions.of(peer), id);
        std::thread::sleep(Duration::from_millis(20));
        assert!(sessions.expire().is_empty(), "implicit sessions do not time out");
        assert_eq!(sessions.disconnected(peer), Some(Departed::Ended(id)));
    }
}
