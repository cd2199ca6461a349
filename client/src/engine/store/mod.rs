//! The engine's own tables, next to openmls's (`storage.rs`): every SQL statement over them
//! lives in this module, behind typed functions named in the protocol's words. The schema and
//! its migrations are in [`schema`].
//!
//! Every statement goes through the connection's statement cache ([`CachedSql`]): the same few
//! dozen statements run for every message, and parsing them again each time cost more than
//! running them.

pub(crate) mod acks;
pub(crate) mod commit_log;
pub(crate) mod contacts;
pub(crate) mod dgroups;
pub(crate) mod history;
pub(crate) mod last_resort;
pub(crate) mod members;
pub(crate) mod meta;
pub(crate) mod outbox;
pub(crate) mod psks;
pub(crate) mod schema;
pub(crate) mod seen;
pub(crate) mod send_groups;
pub(crate) mod waiting;

use rusqlite::Connection;

/// Statements kept in the connection's cache (rusqlite's default is 16).
pub(crate) const STATEMENT_CACHE: usize = 256;

/// `execute` and `query_row` through the connection's statement cache.
pub(crate) trait CachedSql {
    /// Like `Connection::execute`, with a cached statement.
    fn exec_cached(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize>;
    /// Like `Connection::query_row`, with a cached statement.
    fn row_cached<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
    /// Like `Statement::query_map` collected into a `Vec`, with a cached statement.
    fn rows_cached<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>>;
}

impl CachedSql for Connection {
    fn exec_cached(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    fn row_cached<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }

    fn rows_cached<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        self.prepare_cached(sql)?.query_map(p, f)?.collect()
    }
}

/// A savepoint of one engine operation or step. openmls_sqlite_storage runs no transactions
/// itself, so every operation wraps openmls's writes and ours in one (see `Ctx::savepoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Savepoint {
    /// One public engine call.
    Operation,
    /// One input of a batch.
    Input,
    /// One released waiting message.
    Released,
    /// One deferred leaf refresh fed to openmls.
    Deferred,
    /// One openmls `process_message` call.
    Process,
    /// Staging a Welcome until its signer's key is known to be the pinned one (staging
    /// consumes the key package it is addressed to).
    Staging,
}

impl Savepoint {
    /// Its `SAVEPOINT`, `RELEASE` and `ROLLBACK TO` statements.
    fn sql(self) -> [&'static str; 3] {
        match self {
            Savepoint::Operation => [
                "SAVEPOINT dmls_op",
                "RELEASE dmls_op",
                "ROLLBACK TO dmls_op",
            ],
            Savepoint::Input => [
                "SAVEPOINT dmls_input",
                "RELEASE dmls_input",
                "ROLLBACK TO dmls_input",
            ],
            Savepoint::Released => [
                "SAVEPOINT dmls_released",
                "RELEASE dmls_released",
                "ROLLBACK TO dmls_released",
            ],
            Savepoint::Deferred => [
                "SAVEPOINT dmls_deferred",
                "RELEASE dmls_deferred",
                "ROLLBACK TO dmls_deferred",
            ],
            Savepoint::Process => [
                "SAVEPOINT dmls_process",
                "RELEASE dmls_process",
                "ROLLBACK TO dmls_process",
            ],
            Savepoint::Staging => [
                "SAVEPOINT dmls_staging",
                "RELEASE dmls_staging",
                "ROLLBACK TO dmls_staging",
            ],
        }
    }

    /// Opens the savepoint.
    pub(crate) fn begin(self, conn: &Connection) -> rusqlite::Result<()> {
        conn.exec_cached(self.sql()[0], []).map(drop)
    }

    /// Keeps what was written since [`Savepoint::begin`].
    pub(crate) fn release(self, conn: &Connection) -> rusqlite::Result<()> {
        conn.exec_cached(self.sql()[1], []).map(drop)
    }

    /// Undoes what was written since [`Savepoint::begin`] and closes the savepoint.
    pub(crate) fn rollback(self, conn: &Connection) -> rusqlite::Result<()> {
        conn.exec_cached(self.sql()[2], [])?;
        self.release(conn)
    }
}

/// A 32-byte id column (Send Group id); rows are written only by us with this length.
pub(crate) fn id32(v: &[u8]) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(v).ok()
}
