-- Welcomes kept unjoined until the DGroup config we hold lists their owner or the members
-- they bring (docs/PROTOCOL.md "DGroup configuration"), retried when it gains members.
CREATE TABLE dmls_waiting_welcome (
    id INTEGER PRIMARY KEY,
    dgroup_id BLOB NOT NULL,
    from_account TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX dmls_waiting_welcome_dgroup ON dmls_waiting_welcome(dgroup_id, id);
