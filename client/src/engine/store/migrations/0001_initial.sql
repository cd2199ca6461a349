-- The engine's tables as the first release created them. `IF NOT EXISTS` throughout: a
-- database written before schema versions were recorded may hold some of them already
-- (see `schema.rs`). Key-only tables are `WITHOUT ROWID`, one b-tree instead of two.

CREATE TABLE IF NOT EXISTS dmls_meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- One row per DGroup we know (PROTOCOL.md 'DGroup configuration').
CREATE TABLE IF NOT EXISTS dmls_dgroup (
    dgroup_id BLOB PRIMARY KEY,
    config BLOB NOT NULL,
    name TEXT NOT NULL,
    we_removed INTEGER NOT NULL DEFAULT 0
);
-- One row per Send Group of each DGroup, ours included.
CREATE TABLE IF NOT EXISTS dmls_send_group (
    group_id BLOB PRIMARY KEY,
    dgroup_id BLOB NOT NULL,
    owner TEXT NOT NULL,
    is_own INTEGER NOT NULL,
    joined INTEGER NOT NULL DEFAULT 0,
    joined_epoch INTEGER,
    after_seq INTEGER NOT NULL DEFAULT 0,
    -- set when the owner was removed: epochs beyond this one are not processed
    stop_epoch INTEGER,
    -- own group: 'claiming' until members are added, then 'active'
    own_state TEXT,
    last_update_ms INTEGER NOT NULL DEFAULT 0,
    msgs_since_update INTEGER NOT NULL DEFAULT 0,
    sent_in_epoch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dmls_send_group_by_dgroup ON dmls_send_group(dgroup_id);
-- Removed members per DGroup; pending = still in our own Send Group.
CREATE TABLE IF NOT EXISTS dmls_removed (
    dgroup_id BLOB NOT NULL,
    member TEXT NOT NULL,
    pending INTEGER NOT NULL,
    PRIMARY KEY (dgroup_id, member)
);
-- Config members missing from our own Send Group (no valid key package could be claimed
-- for them); `Engine::retry_missing_members` claims again and adds them late.
CREATE TABLE IF NOT EXISTS dmls_missing (
    dgroup_id BLOB NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (dgroup_id, member)
);
-- Exported PSKs (the secret itself lives in openmls's PSK store) (PROTOCOL.md 'PSK export').
CREATE TABLE IF NOT EXISTS dmls_psk (
    psk_id BLOB PRIMARY KEY,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dmls_psk_by_group ON dmls_psk(group_id, epoch);
-- Latest epoch of each Send Group acknowledged (imported) by each member (replaced by
-- `dmls_acks` in 0003).
CREATE TABLE IF NOT EXISTS dmls_ack (
    acker TEXT NOT NULL,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (acker, group_id)
) WITHOUT ROWID;
-- Received messages that cannot be processed yet (PROTOCOL.md 'Receiving').
-- wait_kind, wait_epoch, wait_psk: what it waits for, encoded by `store/waiting.rs`.
-- id: insertion order (no AUTOINCREMENT: ids only order the rows present, nothing outside
-- refers to them).
CREATE TABLE IF NOT EXISTS dmls_waiting (
    id INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    is_commit INTEGER NOT NULL,
    wait_kind TEXT NOT NULL,
    wait_epoch INTEGER,
    wait_psk BLOB,
    hash BLOB NOT NULL UNIQUE,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dmls_waiting_by_epoch ON dmls_waiting(group_id, wait_kind, wait_epoch);
-- Only commits waiting for a PSK are looked up by it (most rows are deferred leaf refreshes).
CREATE INDEX IF NOT EXISTS dmls_waiting_by_psk ON dmls_waiting(wait_psk) WHERE wait_psk IS NOT NULL;
-- Hashes of messages already processed or sent, for duplicate detection.
CREATE TABLE IF NOT EXISTS dmls_seen (
    hash BLOB PRIMARY KEY
) WITHOUT ROWID;
-- Application messages shown to the user, ours included.
CREATE TABLE IF NOT EXISTS dmls_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dgroup_id BLOB NOT NULL,
    sender TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    generation INTEGER
);
CREATE INDEX IF NOT EXISTS dmls_history_by_dgroup ON dmls_history(dgroup_id, id);
-- Durable outbox (effects as MessagePack), performed in id order by the shell.
CREATE TABLE IF NOT EXISTS dmls_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    effect BLOB NOT NULL
);
