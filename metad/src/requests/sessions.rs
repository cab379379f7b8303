//! Client sessions and what they hold: the session itself, the files it has open, and its
//! write leases (read leases come with the answers of other families). Open files are
//! counted in memory and recorded for restarts; the only mutation is the `Reclaim` of a
//! file whose last close leaves it nameless (`Store::release_file`).

use tracing::info;

use super::{Caller, Family, Grant, Leasing, Target};
use crate::leases::Need;
use crate::server::{MetadServer, Outcome};
use crate::store::View;
use shardfs_meta_api::proto::{
    FileKind, MAX_RESERVED_INOS, MetaError, MetaReply, MetaResponse, SessionRequest,
};

impl Family for SessionRequest {
    /// A session acts for its own client only: there is nobody else's to touch. Nobody
    /// writes an immutable file, so no mount buffers writes to one.
    fn permitted(&self, view: &dyn View) -> Result<(), MetaError> {
        match self {
            SessionRequest::WriteLease { ino } => match view.get_attr(*ino)?.flags.immutable() {
                true => Err(MetaError::NotPermitted),
                false => Ok(()),
            },
            SessionRequest::OpenSession { .. }
            | SessionRequest::Heartbeat
            | SessionRequest::CloseSession
            | SessionRequest::OpenFile { .. }
            | SessionRequest::ReleaseFile { .. }
            | SessionRequest::ReleaseLease { .. }
            | SessionRequest::ReclaimDone => Ok(()),
            SessionRequest::ReserveInos { count } => match *count {
                1..=MAX_RESERVED_INOS => Ok(()),
                _ => Err(MetaError::Invalid(format!(
                    "reserve 1 to {MAX_RESERVED_INOS} inode numbers"
                ))),
            },
        }
    }

    fn leasing(&self) -> Leasing<'_> {
        match self {
            SessionRequest::WriteLease { ino } => Leasing::Covered {
                needs: vec![(Target::Inode(*ino), Need::Write)],
                grant: Grant::Write { ino: *ino },
            },
            // A mount opens a file under its read lease without asking; one that asks
            // changes nothing other mounts cache. A close takes the lease table's lock
            // itself, to decide whether a nameless file may go.
            SessionRequest::OpenSession { .. }
            | SessionRequest::Heartbeat
            | SessionRequest::CloseSession
            | SessionRequest::OpenFile { .. }
            | SessionRequest::ReleaseFile { .. }
            | SessionRequest::ReleaseLease { .. }
            | SessionRequest::ReserveInos { .. }
            | SessionRequest::ReclaimDone => Leasing::Uncovered,
        }
    }

    fn answer(self, server: &MetadServer, caller: Caller) -> Outcome {
        Outcome::Answered(reply(self, server, caller))
    }
}

fn reply(
    request: SessionRequest,
    server: &MetadServer,
    Caller { holder, peer }: Caller,
) -> MetaResponse {
    let (store, sessions, leases) = (&server.store, &server.sessions, &server.leases);
    Ok(match request {
        SessionRequest::OpenSession { host, resume } => {
            let (id, replaced) = sessions.open(peer, host.clone(), resume);
            // Recorded, so it can resume after a restart with what it holds.
            store.save_session(id, &host)?;
            if let Some(implicit) = replaced {
                server.release_session(implicit);
            }
            // A mount (re)connecting starts with empty caches. Its write leases stay until
            // it gives them back when they are recalled, having sent what it changed under
            // them (which it may still have to).
            leases.release_reads(id);
            let timeout_ms = sessions.timeout().as_millis() as u64;
            MetaReply::Session { id, timeout_ms, incarnation: server.grace.incarnation() }
        }
        SessionRequest::Heartbeat => match sessions.is_explicit(holder) {
            true => MetaReply::Done,
            false => return Err(MetaError::SessionExpired),
        },
        SessionRequest::CloseSession => {
            if let Some(id) = sessions.close(peer) {
                info!(holder = id, "client session closed");
                server.release_session(id);
            }
            MetaReply::Done
        }
        SessionRequest::OpenFile { ino } => {
            MetaReply::Attr(store.open_file(ino, holder, sessions.limits().open_files)?)
        }
        SessionRequest::ReleaseFile { ino } => {
            // The file is marked as changing while the lease table is locked: no lease is
            // granted on it between the check and its deletion.
            let mut table = leases.lock();
            let leased = !table.holders_of(ino).is_empty();
            let changing = leases.begin_change(&mut table, vec![ino]);
            drop(table);
            store.release_file(ino, holder, leased)?;
            drop(changing);
            MetaReply::Done
        }
        SessionRequest::WriteLease { ino } => {
            let attr = store.get_attr(ino)?;
            if attr.kind != FileKind::File {
                return Err(MetaError::Invalid("write leases are for regular files".into()));
            }
            MetaReply::Attr(attr)
        }
        SessionRequest::ReleaseLease { ino, seq } => {
            leases.release(holder, ino, seq);
            MetaReply::Done
        }
        SessionRequest::ReclaimDone => {
            server.grace.done(holder);
            MetaReply::Done
        }
        // Only a mount's session is recorded, and so keeps its numbers across a restart.
        SessionRequest::ReserveInos { count } => match sessions.is_explicit(holder) {
            true => {
                let (first, first_cookie) = store.reserve_inos(holder, count)?;
                MetaReply::Inos { first, count, first_cookie }
            }
            false => return Err(MetaError::Invalid("only a mount's session batches".into())),
        },
    })
}
