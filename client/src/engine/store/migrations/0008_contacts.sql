-- Identity keys pinned per client id (trust on first use, docs/PROTOCOL.md "Pinning"): the
-- first key accepted for a client id, when and where it was first seen, and when its safety
-- number was confirmed (NULL: not verified).
CREATE TABLE dmls_contact (
    client_id TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    first_seen_where TEXT NOT NULL,
    verified_ms INTEGER
) WITHOUT ROWID;

-- Keys seen for a pinned client id that differ from its pinned key, until the user trusts
-- one of them or they are dismissed by a later pin. One row per (client id, key).
CREATE TABLE dmls_key_change (
    client_id TEXT NOT NULL,
    new_key BLOB NOT NULL,
    seen_ms INTEGER NOT NULL,
    seen_where TEXT NOT NULL,
    PRIMARY KEY (client_id, new_key)
) WITHOUT ROWID;

-- Welcomes refused because their signer's key is not the pinned one: joined only if the
-- user trusts that key.
CREATE TABLE dmls_held_welcome (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    key BLOB NOT NULL,
    from_id TEXT NOT NULL,
    data BLOB NOT NULL
);
