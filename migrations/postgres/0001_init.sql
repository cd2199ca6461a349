-- The relay's schema (PostgreSQL). SQLite has the same tables in migrations/sqlite.
-- Times are milliseconds since the Unix epoch. Tokens are stored only as SHA-256 hashes.

CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY,
    token_hash  BYTEA NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    -- Handed out (and kept) when the stock is empty.
    last_resort BYTEA
);

CREATE TABLE key_packages (
    id         BIGSERIAL PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    data       BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX key_packages_by_client ON key_packages (client_id, id);

CREATE TABLE welcomes (
    id          BIGSERIAL PRIMARY KEY,
    recipient   TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    sender      TEXT NOT NULL,
    data        BYTEA NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX welcomes_by_recipient ON welcomes (recipient, id);
CREATE INDEX welcomes_by_received_at ON welcomes (received_at);

-- `last_seq` stays when old messages are pruned, so seqs are never reused.
CREATE TABLE relay_groups (
    id         BIGSERIAL PRIMARY KEY,
    owner      TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    group_id   TEXT NOT NULL,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (owner, group_id)
);

CREATE TABLE group_members (
    group_ref BIGINT NOT NULL REFERENCES relay_groups (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    -- Place in the owner's member list; NULL for former members.
    ordinal   BIGINT,
    -- NULL: current member. Otherwise a former member, who may still read seq <= read_upto.
    read_upto BIGINT,
    PRIMARY KEY (group_ref, client_id)
);
CREATE INDEX group_members_by_client ON group_members (client_id);

CREATE TABLE messages (
    group_ref   BIGINT NOT NULL REFERENCES relay_groups (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    sender      TEXT NOT NULL,
    data        BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (group_ref, seq)
);
CREATE INDEX messages_by_received_at ON messages (received_at);

CREATE TABLE idempotency_keys (
    group_ref  BIGINT NOT NULL REFERENCES relay_groups (id) ON DELETE CASCADE,
    sender     TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    idem_key   TEXT NOT NULL,
    body_hash  BYTEA NOT NULL,
    seq        BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_ref, sender, idem_key)
);
CREATE INDEX idempotency_keys_by_sender ON idempotency_keys (sender);
CREATE INDEX idempotency_keys_by_created_at ON idempotency_keys (created_at);
