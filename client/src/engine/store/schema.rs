//! The engine's schema: ordered migrations, the version reached recorded in
//! `PRAGMA user_version` (openmls_sqlite_storage keeps its own migrations in its own table).
//!
//! A new migration is one new file in `migrations/` and one line in [`MIGRATIONS`]. Each runs
//! once, in order, in one savepoint with the version it reaches.

use rusqlite::Connection;

use crate::engine::error::EngineError;

/// The migrations, in order: migration `i` (from 0) brings the schema to version `i + 1`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("initial", include_str!("migrations/0001_initial.sql")),
    (
        "send_group_psk_limit_epoch",
        include_str!("migrations/0002_send_group_psk_limit_epoch.sql"),
    ),
    (
        "acks_per_dgroup",
        include_str!("migrations/0003_acks_per_dgroup.sql"),
    ),
    (
        "send_group_closed",
        include_str!("migrations/0004_send_group_closed.sql"),
    ),
    (
        "psk_stored_ms",
        include_str!("migrations/0005_psk_stored_ms.sql"),
    ),
    (
        "last_resort_leaf",
        include_str!("migrations/0006_last_resort_leaf.sql"),
    ),
    ("commit_log", include_str!("migrations/0007_commit_log.sql")),
    ("contacts", include_str!("migrations/0008_contacts.sql")),
    (
        "leave_and_name",
        include_str!("migrations/0009_leave_and_name.sql"),
    ),
    (
        "held_welcomes",
        include_str!("migrations/0010_held_welcomes.sql"),
    ),
];

/// The schema version this code writes.
pub(crate) const VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the schema to [`VERSION`]. A database of a later version is refused.
pub(crate) fn migrate(conn: &Connection) -> Result<(), EngineError> {
    let mut version = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0))?;
    if version == 0 {
        version = unversioned(conn)?;
        if version > 0 {
            // Recorded now, so that the detection runs once.
            conn.pragma_update(None, "user_version", version)?;
        }
    }
    if version > VERSION {
        return Err(EngineError::SchemaTooNew {
            found: version,
            supported: VERSION,
        });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = i as u32 + 1;
        conn.execute_batch("SAVEPOINT dmls_migrate")?;
        let applied = conn
            .execute_batch(sql)
            .and_then(|()| conn.pragma_update(None, "user_version", to));
        if let Err(e) = applied {
            let _ = conn.execute_batch("ROLLBACK TO dmls_migrate; RELEASE dmls_migrate");
            return Err(EngineError::Migration(format!(
                "engine schema migration {to:04} ({name}): {e}"
            )));
        }
        conn.execute_batch("RELEASE dmls_migrate")?;
    }
    Ok(())
}

/// The version of a database that records none: 0 when it has none of our tables, else the
/// version matching the changes it has. Versions of this code before schema versions were
/// recorded applied the changes of migrations 0002 to 0005 in that order (as `ALTER TABLE`s at
/// open), so the changes present are a prefix of them. Read-only. A database without 0002
/// starts at 0 again: 0001 only creates what is missing, tables added before 0002 included.
fn unversioned(conn: &Connection) -> Result<u32, EngineError> {
    if !has_table(conn, "dmls_meta")? {
        return Ok(0);
    }
    let changes = [
        has_column(conn, "dmls_send_group", "psk_limit_epoch")?,
        has_table(conn, "dmls_acks")? && !has_table(conn, "dmls_ack")?,
        has_column(conn, "dmls_send_group", "closed")?,
        has_column(conn, "dmls_psk", "stored_ms")?,
    ];
    match changes.iter().take_while(|c| **c).count() {
        0 => Ok(0),
        n => Ok(1 + n as u32),
    }
}

fn has_table(conn: &Connection, table: &str) -> Result<bool, EngineError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )?)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, EngineError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::params;

    use super::*;
    use crate::engine::config::DGroupConfig;
    use crate::engine::ids::{DGroupId, send_group_id};
    use crate::engine::{Effect, Engine, WaitReason, WaitingMessage};

    /// The tables as versions before schema versions created them (at their latest: every
    /// column added, acks per DGroup), less the indexes.
    const UNVERSIONED_LATEST: &str = "
        CREATE TABLE dmls_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE dmls_dgroup (dgroup_id BLOB PRIMARY KEY, config BLOB NOT NULL,
            name TEXT NOT NULL, we_removed INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE dmls_send_group (group_id BLOB PRIMARY KEY, dgroup_id BLOB NOT NULL,
            owner TEXT NOT NULL, is_own INTEGER NOT NULL, joined INTEGER NOT NULL DEFAULT 0,
            joined_epoch INTEGER, after_seq INTEGER NOT NULL DEFAULT 0, stop_epoch INTEGER,
            psk_limit_epoch INTEGER, closed INTEGER NOT NULL DEFAULT 0, own_state TEXT,
            last_update_ms INTEGER NOT NULL DEFAULT 0,
            msgs_since_update INTEGER NOT NULL DEFAULT 0,
            sent_in_epoch INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE dmls_removed (dgroup_id BLOB NOT NULL, member TEXT NOT NULL,
            pending INTEGER NOT NULL, PRIMARY KEY (dgroup_id, member));
        CREATE TABLE dmls_missing (dgroup_id BLOB NOT NULL, member TEXT NOT NULL,
            PRIMARY KEY (dgroup_id, member));
        CREATE TABLE dmls_psk (psk_id BLOB PRIMARY KEY, group_id BLOB NOT NULL,
            epoch INTEGER NOT NULL, stored_ms INTEGER) WITHOUT ROWID;
        CREATE TABLE dmls_acks (dgroup_id BLOB NOT NULL, acker TEXT NOT NULL,
            acks BLOB NOT NULL, PRIMARY KEY (dgroup_id, acker)) WITHOUT ROWID;
        CREATE TABLE dmls_waiting (id INTEGER PRIMARY KEY, group_id BLOB NOT NULL,
            epoch INTEGER NOT NULL, is_commit INTEGER NOT NULL, wait_kind TEXT NOT NULL,
            wait_epoch INTEGER, wait_psk BLOB, hash BLOB NOT NULL UNIQUE, data BLOB NOT NULL);
        CREATE TABLE dmls_seen (hash BLOB PRIMARY KEY) WITHOUT ROWID;
        CREATE TABLE dmls_history (id INTEGER PRIMARY KEY AUTOINCREMENT,
            dgroup_id BLOB NOT NULL, sender TEXT NOT NULL, sent_at_ms INTEGER NOT NULL,
            message_id BLOB NOT NULL, content_type TEXT NOT NULL, body BLOB NOT NULL,
            epoch INTEGER NOT NULL, generation INTEGER);
        CREATE TABLE dmls_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, effect BLOB NOT NULL);
    ";

    /// An older unversioned layout: acks per member and Send Group (`dmls_ack`), neither
    /// `closed` nor `stored_ms`.
    fn unversioned_older() -> String {
        UNVERSIONED_LATEST
            .replace("closed INTEGER NOT NULL DEFAULT 0, ", "")
            .replace(", stored_ms INTEGER", "")
            .replace(
                "CREATE TABLE dmls_acks (dgroup_id BLOB NOT NULL, acker TEXT NOT NULL,
            acks BLOB NOT NULL, PRIMARY KEY (dgroup_id, acker)) WITHOUT ROWID;",
                "CREATE TABLE dmls_ack (acker TEXT NOT NULL, group_id BLOB NOT NULL,
            epoch INTEGER NOT NULL, PRIMARY KEY (acker, group_id)) WITHOUT ROWID;",
            )
    }

    const D: DGroupId = DGroupId([9; 16]);
    const MEMBERS: [&str; 3] = ["alice", "bob", "carol"];

    /// Rows of one DGroup of alice with bob and carol, none of its Send Groups joined (so
    /// that no openmls state is needed). `acks_sql` writes bob's group acked at epoch 1 by
    /// alice and at epoch 2 by carol.
    fn fill(conn: &Connection, acks_sql: &str) {
        let config = DGroupConfig {
            dgroup_id: D,
            name: "team".into(),
            members: MEMBERS.iter().map(|m| m.to_string()).collect(),
            cipher_suites: vec![crate::engine::config::DEFAULT_CIPHERSUITE],
            psk_length: crate::engine::PSK_LENGTH,
            add_policy: Default::default(),
            removed: Vec::new(),
        };
        for (k, v) in [
            ("client_id", b"alice".to_vec()),
            ("state_codec", b"msgpack-bin".to_vec()),
            ("welcome_cursor", 7u64.to_be_bytes().to_vec()),
        ] {
            conn.execute("INSERT INTO dmls_meta VALUES (?1, ?2)", params![k, v])
                .unwrap();
        }
        conn.execute(
            "INSERT INTO dmls_dgroup(dgroup_id, config, name) VALUES (?1, ?2, 'team')",
            params![D.0.as_slice(), config.encode().unwrap()],
        )
        .unwrap();
        for (i, m) in MEMBERS.iter().enumerate() {
            conn.execute(
                "INSERT INTO dmls_send_group(group_id, dgroup_id, owner, is_own, after_seq, own_state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    send_group_id(&D, m).as_slice(),
                    D.0.as_slice(),
                    m,
                    i == 0,
                    10 + i as i64,
                    (i == 0).then_some("claiming")
                ],
            )
            .unwrap();
        }
        let bob = send_group_id(&D, "bob");
        for epoch in [1u64, 2] {
            let psk = crate::engine::ids::PskId {
                epoch,
                group_id: bob,
            };
            conn.execute(
                "INSERT INTO dmls_psk(psk_id, group_id, epoch) VALUES (?1, ?2, ?3)",
                params![psk.to_bytes().as_slice(), bob.as_slice(), epoch as i64],
            )
            .unwrap();
        }
        conn.execute_batch(acks_sql).unwrap();
        conn.execute(
            "INSERT INTO dmls_waiting(group_id, epoch, is_commit, wait_kind, hash, data)
             VALUES (?1, 3, 1, 'welcome', x'01', x'02')",
            [send_group_id(&D, "carol").as_slice()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO dmls_history(dgroup_id, sender, sent_at_ms, message_id, content_type, body, epoch)
             VALUES (?1, 'bob', 5, ?2, 'text/plain', x'6869', 1)",
            params![D.0.as_slice(), [3u8; 16].as_slice()],
        )
        .unwrap();
        let effect = rmp_serde::to_vec(&Effect::PostWelcomes(Vec::new())).unwrap();
        conn.execute("INSERT INTO dmls_outbox(effect) VALUES (?1)", [effect])
            .unwrap();
    }

    /// Opens the database at `path` with the engine and checks that it reads every row
    /// [`fill`] wrote, then that the schema is at [`VERSION`].
    fn open_and_check(path: &std::path::Path) {
        let engine = Engine::open(Connection::open(path).unwrap()).unwrap();
        assert_eq!(engine.client_id().unwrap().as_deref(), Some("alice"));
        assert_eq!(engine.welcome_cursor().unwrap(), 7);
        let followed = engine.followed_groups().unwrap();
        assert_eq!(
            followed.iter().map(|f| f.after_seq).collect::<Vec<_>>(),
            vec![10, 11, 12]
        );
        let status = engine.status(&D).unwrap();
        assert_eq!(status.summary.name, "team");
        let bob = &status.send_groups[1];
        assert_eq!(bob.owner, "bob");
        // Only alice has not acknowledged bob's latest epoch (2).
        assert_eq!(bob.psk_deletion_holders, vec!["alice".to_string()]);
        assert_eq!(
            status.send_groups[2].waiting,
            vec![WaitingMessage {
                epoch: 3,
                is_commit: true,
                waits_for: WaitReason::Welcome
            }]
        );
        let history = engine.history(&D, 10).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].body, b"hi");
        assert_eq!(engine.outbox().unwrap().len(), 1);
        drop(engine);
        let conn = Connection::open(path).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        assert!(!has_table(&conn, "dmls_ack").unwrap());
        assert!(has_column(&conn, "dmls_psk", "stored_ms").unwrap());
        assert!(has_column(&conn, "dmls_send_group", "closed").unwrap());
    }

    #[test]
    fn an_unversioned_database_of_the_latest_layout_opens_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(UNVERSIONED_LATEST).unwrap();
        // Acks as 40-byte entries (group id, big-endian epoch).
        let bob = hex::encode(send_group_id(&D, "bob"));
        let acks = format!(
            "INSERT INTO dmls_acks VALUES (x'{d}', 'alice', x'{bob}0000000000000001');
             INSERT INTO dmls_acks VALUES (x'{d}', 'carol', x'{bob}0000000000000002');",
            d = hex::encode(D.0)
        );
        fill(&conn, &acks);
        // Migration 0005 was the last one that unversioned databases could have.
        assert_eq!(unversioned(&conn).unwrap(), 5);
        drop(conn);
        open_and_check(&path);
    }

    #[test]
    fn an_older_unversioned_database_is_migrated_with_its_acks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&unversioned_older()).unwrap();
        let bob = hex::encode(send_group_id(&D, "bob"));
        let acks = format!(
            "INSERT INTO dmls_ack VALUES ('alice', x'{bob}', 1);
             INSERT INTO dmls_ack VALUES ('carol', x'{bob}', 2);
             -- an ack of a Send Group we do not know is dropped
             INSERT INTO dmls_ack VALUES ('carol', x'00', 4);"
        );
        fill(&conn, &acks);
        assert_eq!(unversioned(&conn).unwrap(), 2);
        drop(conn);
        open_and_check(&path);
        let conn = Connection::open(&path).unwrap();
        let stored: Vec<u8> = conn
            .query_row(
                "SELECT acks FROM dmls_acks WHERE acker = 'carol'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let mut expected = send_group_id(&D, "bob").to_vec();
        expected.extend_from_slice(&2u64.to_be_bytes());
        assert_eq!(stored, expected);
    }

    #[test]
    fn a_new_database_gets_every_migration_and_a_later_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut engine = Engine::open(Connection::open(&path).unwrap()).unwrap();
        engine.create_identity("alice").unwrap();
        drop(engine);
        let conn = Connection::open(&path).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Engine::open(Connection::open(&path).unwrap()).unwrap_err();
        assert!(
            matches!(err, EngineError::SchemaTooNew { found, supported }
                if found == VERSION + 1 && supported == VERSION),
            "{err}"
        );
    }
}
