//! Read-only connections beside the writer's, for reads while a change holds it
//! (`Store::read`). With WAL, a read sees every transaction committed before it began and
//! never waits for the writer, so a lookup does not queue behind a change or a long check.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::store::Sql as _;
use shardfs_meta_api::proto::MetaError;
use shardfs_rpc::sync::Lock as _;

/// Idle connections kept for the next reads; more are opened while reads overlap.
const KEPT: usize = 8;

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: &Path) -> Readers {
        Readers { path: path.to_owned(), idle: Mutex::default() }
    }

    /// Runs `f` in one read transaction (a consistent snapshot) on a connection of its own.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let idle = self.idle.locked().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .sql()
            .and_then(|tx| f(&tx));
        let mut idle = self.idle.locked();
        if idle.len() < KEPT {
            idle.push(conn);
        }
        result
    }

    fn open(&self) -> Result<Connection, MetaError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).sql()?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).sql()?;
        conn.set_prepared_statement_cache_capacity(super::STATEMENT_CACHE);
        Ok(conn)
    }
}
