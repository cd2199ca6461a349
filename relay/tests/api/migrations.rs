//! A database migrated by an earlier relay keeps opening: the relay finds its migrations applied
//! (same versions, descriptions and checksums in `_sqlx_migrations`), runs none of them again,
//! and serves what the database holds.

use std::str::FromStr as _;

use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgPool, SqlSafeStr as _, SqlitePool};

/// SHA-384 of `migrations/*/0001_init.sql` as released: what `_sqlx_migrations` holds for
/// version 1 in every database made so far. The file must never change.
const INIT_CHECKSUM_SQLITE: &str = "b236242e7aedb10fa4248bb46794d9848bed75ad8f3ec9e3d283bbd011d538ac17a60295662c030b6244819bd6a1a8d4";
const INIT_CHECKSUM_POSTGRES: &str = "041ab542fba80ad7a76f4223d9e1129cf4d7c0e384de5f4add19e523e42a1718ca57ffac01fb879400b9382c9ddf7950";

/// The migrator of the relays that listed their one migration by hand.
fn earlier_migrator(sql: &'static str) -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        sql.into_sql_str(),
        false,
    )])
}

/// A client row as an earlier relay stored it, and the token that authenticates it.
fn earlier_client() -> (String, Vec<u8>) {
    let raw = [7u8; 32];
    (URL_SAFE_NO_PAD.encode(raw), Sha256::digest(raw).to_vec())
}

const INSERT_CLIENT: &str =
    "INSERT INTO clients (client_id, token_hash, created_at) VALUES ('early', $1, 1)";
const APPLIED: &str = "SELECT version, description, checksum, CAST(installed_on AS TEXT), success FROM _sqlx_migrations ORDER BY version";

/// (version, description, checksum, installed_on, success) of each applied migration.
type Applied = Vec<(i64, String, Vec<u8>, String, bool)>;

/// Runs `$body` with `$pool` connected to `$db`, whichever backend it is, then closes it.
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db.backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(&$db.url)
                    .unwrap()
                    .create_if_missing(true);
                let $pool = SqlitePool::connect_with(options).await.unwrap();
                let out = $body;
                $pool.close().await;
                out
            }
            Backend::Postgres => {
                let $pool = PgPool::connect(&$db.url).await.unwrap();
                let out = $body;
                $pool.close().await;
                out
            }
        }
    };
}

/// Migrates `db` as an earlier relay did, stores a client, and returns the migration records.
async fn migrate_as_before(db: &Db, token_hash: &[u8]) -> Applied {
    let init = match db.backend {
        Backend::Sqlite => include_str!("../../../migrations/sqlite/0001_init.sql"),
        Backend::Postgres => include_str!("../../../migrations/postgres/0001_init.sql"),
    };
    with_pool!(db, |pool| {
        earlier_migrator(init).run(&pool).await.unwrap();
        sqlx::query(INSERT_CLIENT)
            .bind(token_hash)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query_as(APPLIED).fetch_all(&pool).await.unwrap()
    })
}

async fn applied_now(db: &Db) -> Applied {
    with_pool!(db, |pool| sqlx::query_as(APPLIED)
        .fetch_all(&pool)
        .await
        .unwrap())
}

backend_tests! {
    async fn a_database_migrated_by_an_earlier_relay_opens_without_migrating_again(db: Db) {
        let (token, token_hash) = earlier_client();
        let before = migrate_as_before(&db, &token_hash).await;
        let pinned = match db.backend {
            Backend::Sqlite => INIT_CHECKSUM_SQLITE,
            Backend::Postgres => INIT_CHECKSUM_POSTGRES,
        };
        assert_eq!(before.len(), 1);
        assert_eq!((before[0].0, before[0].1.as_str()), (1, "init"));
        assert_eq!(hex::encode(&before[0].2), pinned, "0001_init.sql changed");

        for start in 0..2 {
            let relay = db.relay().await;
            let early = relay.client("early", &token);
            assert_eq!(early.me().await.client_id, "early");
            relay.register(&format!("later{start}")).await;
            relay.stop().await;
        }
        let after = applied_now(&db).await;
        assert_eq!(after.first(), before.first(), "version 1 was not applied again");
        assert!(after.iter().all(|m| m.4), "every migration succeeded: {after:?}");
    }
}

/// The migrations before welcome bodies (`0003_welcome_bodies.sql`), as an earlier relay
/// applied them.
fn migrator_before_welcome_bodies(backend: &Backend) -> Migrator {
    let (init, usage) = match backend {
        Backend::Sqlite => (
            include_str!("../../../migrations/sqlite/0001_init.sql"),
            include_str!("../../../migrations/sqlite/0002_client_usage.sql"),
        ),
        Backend::Postgres => (
            include_str!("../../../migrations/postgres/0001_init.sql"),
            include_str!("../../../migrations/postgres/0002_client_usage.sql"),
        ),
    };
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            init.into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "client usage".into(),
            MigrationType::Simple,
            usage.into_sql_str(),
            false,
        ),
    ])
}

backend_tests! {
    async fn welcomes_stored_before_welcome_bodies_survive_the_migration_and_ids_go_on(db: Db) {
        let (token, token_hash) = earlier_client();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        with_pool!(db, |pool| {
            migrator_before_welcome_bodies(&db.backend).run(&pool).await.unwrap();
            sqlx::query(INSERT_CLIENT).bind(&token_hash).execute(&pool).await.unwrap();
            for data in [b"w1", b"w2", b"w3"] {
                sqlx::query(
                    "INSERT INTO welcomes (recipient, sender, data, received_at) VALUES ('early', 'sender', $1, $2)",
                )
                .bind(data.as_slice())
                .bind(now)
                .execute(&pool)
                .await
                .unwrap();
            }
            // The highest id handed out is gone again.
            sqlx::query("DELETE FROM welcomes WHERE id = 3").execute(&pool).await.unwrap();
        });

        let relay = db.relay().await;
        let early = relay.client("early", &token);
        let inbox = early.inbox().await;
        assert_eq!(
            inbox,
            vec![(1, "sender".to_string(), b"w1".to_vec()), (2, "sender".to_string(), b"w2".to_vec())]
        );
        let later = relay.register("later").await;
        assert_eq!(later.send_welcomes(&[("early", b"w4")]).await, vec![4], "ids never go back");
        let resp = early.delete("/v1/welcomes?upto=2").send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::NO_CONTENT);
        assert_eq!(early.inbox().await, vec![(4, "later".to_string(), b"w4".to_vec())]);
        relay.stop().await;

        let bodies: (i64,) = with_pool!(db, |pool| sqlx::query_as("SELECT COUNT(*) FROM welcome_bodies")
            .fetch_one(&pool)
            .await
            .unwrap());
        assert_eq!(bodies.0, 1, "the deleted welcomes' bodies went with them");
        let after = applied_now(&db).await;
        assert_eq!(after.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}
