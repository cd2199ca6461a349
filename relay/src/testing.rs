//! Test support for tests that run a relay: the relay's own and the client's (cargo feature
//! `testing`, so none of it is in the release binary).
//!
//! PostgreSQL tests run only when `DMLS_TEST_DATABASE_URL` names a server the tests may create
//! databases on (for example `postgres://postgres@127.0.0.1:5432/test`); each call of
//! [`postgres_test_url`] gets a fresh database, so tests never see each other's data.

use std::path::Path;

use clap::Parser as _;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _, PgConnection};

use crate::Config;
pub use crate::config::redact_url;
pub use crate::store::postgres::LISTEN_APPLICATION_NAME;

/// The variable that turns the PostgreSQL tests on.
pub const TEST_DATABASE_URL_VAR: &str = "DMLS_TEST_DATABASE_URL";

/// A fresh, uniquely named database (`dmls_test_<random hex>`) on the server named by
/// `DMLS_TEST_DATABASE_URL`, as a URL; `None` if the variable is unset or empty.
///
/// Panics if the variable is set but the database cannot be created: a configured test server
/// that does not work must fail the tests, not skip them.
pub async fn postgres_test_url() -> Option<String> {
    let base = std::env::var(TEST_DATABASE_URL_VAR)
        .ok()
        .filter(|s| !s.trim().is_empty())?;
    let name = format!("dmls_test_{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut conn = match PgConnection::connect(&base).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "{TEST_DATABASE_URL_VAR} is set, but connecting to {} failed: {e}",
            redact_url(&base)
        ),
    };
    drop_stale_test_databases(&mut conn).await;
    // `name` is made of ASCII letters, digits and '_' only.
    if let Err(e) = conn
        .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
    {
        panic!("cannot create the test database {name}: {e}");
    }
    let _ = conn.close().await;
    Some(with_database(&base, &name))
}

/// Test databases older than an hour are left-overs of earlier runs: drops a few of them per
/// call (best effort: reading their age needs a superuser or `pg_read_server_files`; each
/// DROP DATABASE costs a checkpoint, hence only a few).
async fn drop_stale_test_databases(conn: &mut PgConnection) {
    let stale: Vec<(String,)> = sqlx::query_as(
        "SELECT datname FROM pg_database WHERE datname LIKE 'dmls\\_test\\_%' \
         AND (pg_stat_file('base/' || oid || '/PG_VERSION')).modification \
             < now() - interval '1 hour' \
         LIMIT 10",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    for (name,) in stale {
        if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let _ = conn
                .execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
        }
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    format!("{base}/{name}{query}")
}

/// Tells (on stderr) that a PostgreSQL test did not run, and how to run it.
pub fn skip_notice(test: &str) {
    // Written to the process's stderr directly: libtest captures `eprintln!` of passing tests,
    // and a skipped backend must be visible in a plain `cargo test` run.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test}: {TEST_DATABASE_URL_VAR} not set \
         (e.g. {TEST_DATABASE_URL_VAR}=postgres://postgres@127.0.0.1:5432/test)"
    );
}

/// A SQLite database file in `dir` (created on first open).
pub fn sqlite_test_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("relay.db").display())
}

/// A relay on 127.0.0.1 (a free port) over a SQLite file in `dir`, with the request and
/// registration rate limits off: the harness of tests that drive the relay as a peer.
pub async fn start_sqlite_relay(dir: &Path) -> anyhow::Result<crate::RunningRelay> {
    let url = sqlite_test_url(dir);
    let config = Config::parse_from([
        "dmls-relay",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        url.as_str(),
        "--rate-limit-per-second",
        "0",
        "--registrations-per-minute",
        "0",
    ]);
    crate::start(config).await
}

/// Starts a relay whose handlers read the time from `clock` (milliseconds since the Unix
/// epoch) instead of the system clock: `received_at` of what is stored and the UTC day of the
/// daily storage quota. Tests move the day on with it.
pub async fn start_with_clock(
    config: Config,
    clock: impl Fn() -> i64 + Send + Sync + 'static,
) -> anyhow::Result<crate::RunningRelay> {
    crate::server::start_with_clock(config, Some(std::sync::Arc::new(clock))).await
}

/// The default configuration with this database, as the relay would parse it.
pub fn test_config(database_url: &str) -> Config {
    Config::parse_from(["dmls-relay", "--database-url", database_url])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_databases_replace_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
