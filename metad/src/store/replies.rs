//! Exactly once: a mount numbers its requests in its session (`Seq`), and every change a
//! numbered request makes carries that number ([`RequestId`]), with its place among the
//! request's changes. Applying such a change records its outcome in the `replies` table, in
//! the same transaction; a change whose request was applied already is not applied again,
//! and answers the outcome recorded. So a request retried on a new leader after the old
//! one committed it (but died before answering) gets its first answer, not `EEXIST`.
//!
//! The table keeps a session's outcomes until the session says it has had every answer
//! below a number (`answered_below`), or ends. Only changes that took effect are recorded:
//! one that failed left no trace, and running it again is as if it ran the first time.

use std::cell::Cell;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::Sql as _;
use super::mutation::Outcome;
use shardfs_meta_api::proto::{MetaError, Seq};

/// A change's place in a mount's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub session: u64,
    pub seq: Seq,
    /// Which of the request's changes, in the order it makes them.
    pub part: u32,
}

thread_local! {
    /// The numbered request this thread is answering, and its next change's place.
    static ANSWERING: Cell<Option<RequestId>> = const { Cell::new(None) };
}

/// Runs `answer` (a request's work, on this thread) with every change it makes numbered as
/// part of request `seq` of `session`.
pub fn numbered<T>(session: u64, seq: Option<Seq>, answer: impl FnOnce() -> T) -> T {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            ANSWERING.set(None);
        }
    }
    let Some(seq) = seq else { return answer() };
    ANSWERING.set(Some(RequestId { session, seq, part: 0 }));
    let _done = Done;
    answer()
}

/// The id of the next change the request this thread answers makes, if it is numbered.
pub(super) fn next_part() -> Option<RequestId> {
    let id = ANSWERING.get()?;
    ANSWERING.set(Some(RequestId { part: id.part + 1, ..id }));
    Some(id)
}

/// The outcome recorded for change `id`, if it was applied.
pub(super) fn recorded(tx: &Connection, id: RequestId) -> Result<Option<Outcome>, MetaError> {
    let bytes: Option<Vec<u8>> = tx
        .prepare_cached("SELECT outcome FROM replies WHERE session = ?1 AND seq = ?2 AND part = ?3")
        .sql()?
        .query_row(params![id.session as i64, id.seq.n as i64, id.part], |r| r.get(0))
        .optional()
        .sql()?;
    let Some(bytes) = bytes else { return Ok(None) };
    shardfs_rpc::decode(&bytes)
        .map(Some)
        .map_err(|e| MetaError::Store(format!("a recorded outcome is unreadable: {e}")))
}

/// Records the outcome of change `id`, and forgets those its session has had answers for.
pub(super) fn record(tx: &Connection, id: RequestId, outcome: &Outcome) -> Result<(), MetaError> {
    let session = id.session as i64;
    tx.prepare_cached("DELETE FROM replies WHERE session = ?1 AND seq < ?2")
        .sql()?
        .execute(params![session, id.seq.answered_below as i64])
        .sql()?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO replies (session, seq, part, outcome) VALUES (?1, ?2, ?3, ?4)",
    )
    .sql()?
    .execute(params![session, id.seq.n as i64, id.part, shardfs_rpc::encode(outcome)])
    .sql()?;
    Ok(())
}

/// Forgets the outcomes of a session that ended.
pub(super) fn forget_session(tx: &Connection, session: u64) -> Result<(), MetaError> {
    tx.prepare_cached("DELETE FROM replies WHERE session = ?1")
        .sql()?
        .execute([session as i64])
        .sql()?;
    Ok(())
}
