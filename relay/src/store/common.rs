//! What both backends run alike: statements whose SQL is the same in SQLite and PostgreSQL, and
//! the mapping of the rows both read.
//!
//! Shared statements use `$1`, `$2`, ... parameters: PostgreSQL's own, and numbered parameters
//! to SQLite too. A statement runs on a [`Conn`], which names the pool or transaction of either
//! backend. SQL that differs between the dialects stays in `sqlite.rs` and `postgres.rs`.

use dmls_api::{ClaimedKeyPackage, Message, Welcome};
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Database, Encode, FromRow, Type};

use super::batch::Usage;
use super::{
    ClaimOutcome, ClientRecord, ClientStats, DailyQuota, GroupRecord, Millis, NewWelcome, Page,
    StoreError, StoreResult, from_db, page, to_db,
};

/// Where a shared statement runs: a pool or an open transaction of either backend.
pub(crate) enum Conn<'a> {
    Sqlite(&'a SqlitePool),
    Postgres(&'a PgPool),
    SqliteTx(&'a mut SqliteConnection),
    PostgresTx(&'a mut PgConnection),
}

/// A value bound to a shared statement.
#[derive(Clone, Copy)]
pub(crate) enum Param<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A row type both backends decode.
pub(crate) trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

fn bind<'q, DB>(
    mut query: Query<'q, DB, DB::Arguments>,
    params: &[Param<'q>],
) -> Query<'q, DB, DB::Arguments>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    &'q [u8]: Encode<'q, DB> + Type<DB>,
{
    for param in params {
        query = match *param {
            Param::Int(v) => query.bind(v),
            Param::Text(v) => query.bind(v),
            Param::Bytes(v) => query.bind(v),
        };
    }
    query
}

/// Runs `$run` with `$e` bound to the executor `$conn` (a `&mut Conn`) holds, whichever backend
/// it is.
macro_rules! on_executor {
    ($conn:expr, |$e:ident| $run:expr) => {
        match $conn {
            Conn::Sqlite(pool) => {
                let $e = *pool;
                $run
            }
            Conn::Postgres(pool) => {
                let $e = *pool;
                $run
            }
            Conn::SqliteTx(conn) => {
                let $e = &mut **conn;
                $run
            }
            Conn::PostgresTx(conn) => {
                let $e = &mut **conn;
                $run
            }
        }
    };
}

impl Conn<'_> {
    /// `"sqlite"` or `"postgres"`.
    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Conn::Sqlite(_) | Conn::SqliteTx(_) => "sqlite",
            Conn::Postgres(_) | Conn::PostgresTx(_) => "postgres",
        }
    }

    pub(crate) async fn fetch_all<R: Row>(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<R>, sqlx::Error> {
        on_executor!(self, |e| {
            let rows = bind(sqlx::query(sql), params).fetch_all(e).await?;
            rows.iter().map(R::from_row).collect()
        })
    }

    pub(crate) async fn fetch_optional<R: Row>(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Option<R>, sqlx::Error> {
        on_executor!(self, |e| {
            let row = bind(sqlx::query(sql), params).fetch_optional(e).await?;
            row.as_ref().map(R::from_row).transpose()
        })
    }

    /// Runs a statement; returns the rows it changed.
    pub(crate) async fn execute(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<u64, sqlx::Error> {
        on_executor!(self, |e| Ok(bind(sqlx::query(sql), params)
            .execute(e)
            .await?
            .rows_affected()))
    }
}

// ---------------------------------------------------------------- rows

/// `seq, sender, data, received_at` of `messages`.
pub(crate) type MessageRow = (i64, String, Vec<u8>, i64);

pub(crate) fn message((seq, sender, data, received_at): MessageRow) -> Message {
    Message {
        seq: from_db(seq),
        sender,
        data: data.into(),
        received_at,
    }
}

/// A message of a `sync` range: the range's index, then a [`MessageRow`].
pub(crate) type RangeMessageRow = (i64, i64, String, Vec<u8>, i64);

pub(crate) fn range_message(
    (index, seq, sender, data, received_at): RangeMessageRow,
) -> (usize, Message) {
    (
        usize::try_from(index).unwrap_or(usize::MAX),
        message((seq, sender, data, received_at)),
    )
}

/// `id, sender, received_at` of `welcomes` with the `data` of its body.
type WelcomeRow = (i64, String, Vec<u8>, i64);

fn welcome((id, from, data, received_at): WelcomeRow) -> Welcome {
    Welcome {
        id: from_db(id),
        from,
        data: data.into(),
        received_at,
    }
}

/// A claim's answer, in `ids` order: the package taken from each client's stock, else its
/// last-resort package, else the id is missing.
pub(crate) fn claim_outcome(
    ids: Vec<String>,
    mut taken: std::collections::HashMap<String, Vec<u8>>,
    mut last_resorts: std::collections::HashMap<String, Vec<u8>>,
) -> ClaimOutcome {
    let mut outcome = ClaimOutcome {
        key_packages: Vec::new(),
        missing: Vec::new(),
    };
    for id in ids {
        let (data, last_resort) = match (taken.remove(&id), last_resorts.remove(&id)) {
            (Some(data), _) => (data, false),
            (None, Some(data)) => (data, true),
            (None, None) => {
                outcome.missing.push(id);
                continue;
            }
        };
        outcome.key_packages.push(ClaimedKeyPackage {
            client_id: id,
            key_package: data.into(),
            last_resort,
        });
    }
    outcome
}

/// `UnknownClients` if `unknown` names any.
pub(crate) fn all_known(unknown: Vec<String>) -> StoreResult<()> {
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(StoreError::UnknownClients(unknown))
    }
}

/// The stock after adding `adding` packages to `stock`; `TooManyKeyPackages` if it grows
/// beyond `max_stock` (a stock above a since lowered limit may stay).
pub(crate) fn stock_after(stock: i64, adding: usize, max_stock: u64) -> StoreResult<u64> {
    let total = from_db(stock).saturating_add(adding as u64);
    if adding > 0 && total > max_stock {
        return Err(StoreError::TooManyKeyPackages { limit: max_stock });
    }
    Ok(total)
}

/// The recipients of `welcomes`, each once, in first-seen order.
pub(crate) fn recipients(welcomes: &[NewWelcome]) -> Vec<String> {
    super::dedup(
        &welcomes
            .iter()
            .flat_map(|w| w.to.iter().cloned())
            .collect::<Vec<_>>(),
    )
}

/// The member list to store (each once) and every client of the group (the owner too), whose
/// registration `put_group` checks.
pub(crate) fn group_clients(owner: &str, members: &[String]) -> (Vec<String>, Vec<String>) {
    let members = super::dedup(members);
    let mut everyone = members.clone();
    everyone.push(owner.to_string());
    let everyone = super::dedup(&everyone);
    (members, everyone)
}

// ---------------------------------------------------------------- shared statements

pub(crate) async fn create_client(
    mut conn: Conn<'_>,
    client_id: &str,
    token_hash: [u8; 32],
    now: Millis,
) -> StoreResult<()> {
    let inserted = conn
        .execute(
            "INSERT INTO clients (client_id, token_hash, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            &[
                Param::Text(client_id),
                Param::Bytes(&token_hash),
                Param::Int(now),
            ],
        )
        .await?;
    if inserted == 0 {
        Err(StoreError::Conflict)
    } else {
        Ok(())
    }
}

pub(crate) async fn client_by_token_hash(
    mut conn: Conn<'_>,
    token_hash: [u8; 32],
) -> StoreResult<Option<ClientRecord>> {
    let row: Option<(String, Vec<u8>)> = conn
        .fetch_optional(
            "SELECT client_id, token_hash FROM clients WHERE token_hash = $1",
            &[Param::Bytes(&token_hash)],
        )
        .await?;
    Ok(row.and_then(|(client_id, hash)| {
        Some(ClientRecord {
            client_id,
            token_hash: <[u8; 32]>::try_from(hash.as_slice()).ok()?,
        })
    }))
}

pub(crate) async fn client_stats(
    mut conn: Conn<'_>,
    client_id: &str,
) -> StoreResult<Option<ClientStats>> {
    let row: Option<(i64, i64, bool)> = conn
        .fetch_optional(
            "SELECT c.created_at, \
             (SELECT COUNT(*) FROM key_packages k WHERE k.client_id = c.client_id), \
             c.last_resort IS NOT NULL FROM clients c WHERE c.client_id = $1",
            &[Param::Text(client_id)],
        )
        .await?;
    Ok(
        row.map(|(created_at, available, has_last_resort)| ClientStats {
            client_id: client_id.to_string(),
            created_at,
            key_packages_available: from_db(available),
            has_last_resort,
        }),
    )
}

/// Replaces the client's last-resort key package.
pub(crate) async fn set_last_resort(
    mut conn: Conn<'_>,
    client_id: &str,
    key_package: &[u8],
) -> StoreResult<()> {
    conn.execute(
        "UPDATE clients SET last_resort = $1 WHERE client_id = $2",
        &[Param::Bytes(key_package), Param::Text(client_id)],
    )
    .await?;
    Ok(())
}

pub(crate) async fn list_welcomes(
    conn: Conn<'_>,
    client_id: &str,
    after: u64,
    limit: u32,
) -> StoreResult<Page<Welcome>> {
    let sql = "SELECT w.id, w.sender, b.data, w.received_at FROM welcomes w \
               JOIN welcome_bodies b ON b.id = w.body \
               WHERE w.recipient = $1 AND w.id > $2 ORDER BY w.id LIMIT $3";
    let params = [Param::Text(client_id), Param::Int(to_db(after))];
    fetch_page(conn, sql, &params, limit, welcome).await
}

/// Drops the client's welcomes with id <= `upto`; returns the bodies they referred to (each
/// once), which may now be unreferenced.
pub(crate) async fn delete_welcome_entries(
    mut conn: Conn<'_>,
    client_id: &str,
    upto: u64,
) -> StoreResult<Vec<i64>> {
    let bodies: Vec<(i64,)> = conn
        .fetch_all(
            "DELETE FROM welcomes WHERE recipient = $1 AND id <= $2 RETURNING body",
            &[Param::Text(client_id), Param::Int(to_db(upto))],
        )
        .await?;
    Ok(distinct_bodies(bodies))
}

/// The bodies that the client's inbox entries refer to, each once.
pub(crate) async fn inbox_bodies(mut conn: Conn<'_>, client_id: &str) -> StoreResult<Vec<i64>> {
    let bodies: Vec<(i64,)> = conn
        .fetch_all(
            "SELECT body FROM welcomes WHERE recipient = $1",
            &[Param::Text(client_id)],
        )
        .await?;
    Ok(distinct_bodies(bodies))
}

fn distinct_bodies(rows: Vec<(i64,)>) -> Vec<i64> {
    let mut bodies: Vec<i64> = rows.into_iter().map(|(b,)| b).collect();
    bodies.sort_unstable();
    bodies.dedup();
    bodies
}

/// Creates the group with no messages if it does not exist; true if it did not.
pub(crate) async fn insert_group(
    mut conn: Conn<'_>,
    owner: &str,
    group_id: &str,
    now: Millis,
) -> StoreResult<bool> {
    let inserted = conn
        .execute(
            "INSERT INTO relay_groups (owner, group_id, last_seq, created_at) \
             VALUES ($1, $2, 0, $3) ON CONFLICT (owner, group_id) DO NOTHING",
            &[Param::Text(owner), Param::Text(group_id), Param::Int(now)],
        )
        .await?;
    Ok(inserted == 1)
}

/// Deletes the group; its messages, members and idempotency keys go with it (ON DELETE
/// CASCADE). False if it did not exist.
pub(crate) async fn delete_group(
    mut conn: Conn<'_>,
    owner: &str,
    group_id: &str,
) -> StoreResult<bool> {
    let deleted = conn
        .execute(
            "DELETE FROM relay_groups WHERE owner = $1 AND group_id = $2",
            &[Param::Text(owner), Param::Text(group_id)],
        )
        .await?;
    Ok(deleted > 0)
}

pub(crate) async fn get_group(
    mut conn: Conn<'_>,
    owner: &str,
    group_id: &str,
) -> StoreResult<Option<GroupRecord>> {
    let row: Option<(i64, i64, i64)> = conn
        .fetch_optional(
            "SELECT id, last_seq, created_at FROM relay_groups WHERE owner = $1 AND group_id = $2",
            &[Param::Text(owner), Param::Text(group_id)],
        )
        .await?;
    let Some((group_ref, last_seq, created_at)) = row else {
        return Ok(None);
    };
    let rows: Vec<(String, Option<i64>)> = conn
        .fetch_all(
            "SELECT client_id, read_upto FROM group_members WHERE group_ref = $1 \
             ORDER BY ordinal IS NULL, ordinal, client_id",
            &[Param::Int(group_ref)],
        )
        .await?;
    let mut record = GroupRecord {
        owner: owner.to_string(),
        group_id: group_id.to_string(),
        members: Vec::new(),
        former_members: Vec::new(),
        last_seq: from_db(last_seq),
        created_at,
    };
    for (client_id, read_upto) in rows {
        match read_upto {
            None => record.members.push(client_id),
            Some(upto) => record.former_members.push((client_id, from_db(upto))),
        }
    }
    Ok(Some(record))
}

pub(crate) async fn read_messages(
    conn: Conn<'_>,
    owner: &str,
    group_id: &str,
    after: u64,
    upto: Option<u64>,
    limit: u32,
) -> StoreResult<Page<Message>> {
    let sql = "SELECT m.seq, m.sender, m.data, m.received_at FROM relay_groups g \
               JOIN messages m ON m.group_ref = g.id \
               WHERE g.owner = $1 AND g.group_id = $2 AND m.seq > $3 AND m.seq <= $4 \
               ORDER BY m.seq LIMIT $5";
    let params = [
        Param::Text(owner),
        Param::Text(group_id),
        Param::Int(to_db(after)),
        Param::Int(upto.map_or(i64::MAX, to_db)),
    ];
    fetch_page(conn, sql, &params, limit, message).await
}

/// A page of at most `limit` of what `sql` returns; its last parameter, after `params`, is the
/// row limit (one more than `limit`, to tell whether there are more).
async fn fetch_page<R: Row, T>(
    mut conn: Conn<'_>,
    sql: &'static str,
    params: &[Param<'_>],
    limit: u32,
    item: fn(R) -> T,
) -> StoreResult<Page<T>> {
    let mut params = params.to_vec();
    params.push(Param::Int(i64::from(limit) + 1));
    let rows: Vec<R> = conn.fetch_all(sql, &params).await?;
    Ok(page(rows.into_iter().map(item).collect(), limit))
}

/// At most `limit` messages of the group `group_ref` after `after`, oldest first.
pub(crate) async fn read_range(
    mut conn: Conn<'_>,
    group_ref: i64,
    after: u64,
    limit: u64,
) -> StoreResult<Vec<Message>> {
    let rows: Vec<MessageRow> = conn
        .fetch_all(
            "SELECT seq, sender, data, received_at FROM messages \
             WHERE group_ref = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[
                Param::Int(group_ref),
                Param::Int(to_db(after)),
                Param::Int(to_db(limit)),
            ],
        )
        .await?;
    Ok(rows.into_iter().map(message).collect())
}

/// The usage of `from` after storing `welcomes` on top of `used`, or `OverQuota`. Every inbox
/// entry counts as one welcome; a welcome's bytes count once, as they are stored once.
pub(crate) fn welcome_usage(
    quota: DailyQuota,
    used: Usage,
    welcomes: &[NewWelcome],
) -> StoreResult<Usage> {
    let bytes = welcomes
        .iter()
        .fold(0usize, |sum, w| sum.saturating_add(w.data.len()));
    let entries = entry_count(welcomes);
    match quota.exceeded(used, entries, bytes) {
        Some(what) => Err(StoreError::OverQuota(what)),
        None => Ok(used.plus(entries, bytes)),
    }
}

/// How many inbox entries `welcomes` make.
pub(crate) fn entry_count(welcomes: &[NewWelcome]) -> usize {
    welcomes.iter().map(|w| w.to.len()).sum()
}

/// Deletes the welcome bodies that no inbox entry refers to any more (all of them: pruning).
/// Safe beside concurrent posts: a body commits together with the entries that refer to it.
pub(crate) async fn delete_unreferenced_bodies(mut conn: Conn<'_>) -> StoreResult<u64> {
    Ok(conn
        .execute(
            "DELETE FROM welcome_bodies \
             WHERE NOT EXISTS (SELECT 1 FROM welcomes w WHERE w.body = welcome_bodies.id)",
            &[],
        )
        .await?)
}
