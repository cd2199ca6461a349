-- The relay's schema (SQLite). PostgreSQL has the same tables in migrations/postgres.
-- Times are milliseconds since the Unix epoch. Tokens are stored only as SHA-256 hashes.

CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    -- Handed out (and kept) when the stock is empty.
    last_resort BLOB
);

CREATE TABLE key_packages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id  TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    data       BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX key_packages_by_client ON key_packages (client_id, id);

-- AUTOINCREMENT: ids never go back, so an inbox read with `after` never sees an old id again.
CREATE TABLE welcomes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    sender      TEXT NOT NULL,
    data        BLOB NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX welcomes_by_recipient ON welcomes (recipient, id);
CREATE INDEX welcomes_by_received_at ON welcomes (received_at);

-- `last_seq` stays when old messages are pruned, so seqs are never reused.
CREATE TABLE relay_groups (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner      TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    group_id   TEXT NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    UNIQUE (owner, group_id)
);

CREATE TABLE group_members (
    group_ref INTEGER NOT NULL REFERENCES relay_groups (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    -- Place in the owner's member list; NULL for former members.
    ordinal   INTEGER,
    -- NULL: current member. Otherwise a former member, who may still read seq <= read_upto.
    read_upto INTEGER,
    PRIMARY KEY (group_ref, client_id)
) WITHOUT ROWID;
CREATE INDEX group_members_by_client ON group_members (client_id);

CREATE TABLE messages (
    group_ref   INTEGER NOT NULL REFERENCES relay_groups (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    sender      TEXT NOT NULL,
    data        BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (group_ref, seq)
);
CREATE INDEX messages_by_received_at ON messages (received_at);

CREATE TABLE idempotency_keys (
    group_ref  INTEGER NOT NULL REFERENCES relay_groups (id) ON DELETE CASCADE,
    sender     TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    idem_key   TEXT NOT NULL,
    body_hash  BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (group_ref, sender, idem_key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_by_sender ON idempotency_keys (sender);
CREATE INDEX idempotency_keys_by_created_at ON idempotency_keys (created_at);
