//! The schema migrations of both backends: every file of `migrations/sqlite` and
//! `migrations/postgres`, embedded in version order by the build script (`relay/build.rs`).
//!
//! They are applied with sqlx's [`Migrator`], which records each in `_sqlx_migrations` and, at
//! every start, checks that the applied ones are unchanged: versions, descriptions and checksums
//! are those `sqlx::migrate!` would give the same files.

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One migration file, as the build script embeds it.
pub(crate) struct EmbeddedMigration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migrator of one backend's migrations ([`SQLITE`] or [`POSTGRES`]).
pub(crate) fn migrator(migrations: &[EmbeddedMigration]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    m.description.into(),
                    MigrationType::Simple,
                    m.sql.into_sql_str(),
                    // sqlx's own marker for a migration that must run outside a transaction.
                    m.sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;

    /// What sqlx's own resolver (`sqlx::migrate!`, `sqlx migrate run`) reads from the folder.
    async fn resolved(folder: &str) -> Migrator {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(folder);
        Migrator::new(dir).await.unwrap()
    }

    fn summary(m: &Migrator) -> Vec<(i64, String, Vec<u8>, bool, bool)> {
        m.iter()
            .map(|m| {
                (
                    m.version,
                    m.description.to_string(),
                    m.checksum.to_vec(),
                    m.no_tx,
                    m.migration_type == MigrationType::Simple,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn embedded_migrations_are_what_sqlx_reads_from_the_folders() {
        for (embedded, folder) in [(SQLITE, "sqlite"), (POSTGRES, "postgres")] {
            let ours = summary(&migrator(embedded));
            assert!(!ours.is_empty(), "{folder}: no migrations embedded");
            assert_eq!(ours, summary(&resolved(folder).await), "{folder}");
        }
    }

    #[test]
    fn versions_ascend() {
        for embedded in [SQLITE, POSTGRES] {
            assert!(embedded.windows(2).all(|w| w[0].version < w[1].version));
            assert_eq!(embedded.first().map(|m| m.description), Some("init"));
        }
    }
}
