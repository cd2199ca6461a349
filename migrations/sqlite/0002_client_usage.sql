-- What each client stored per UTC day, group messages and welcomes together: the daily
-- storage quota (--daily-message-quota, --daily-byte-quota). Updated in the transaction that
-- stores; rows of past days are pruned.
CREATE TABLE client_usage (
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    -- Days since the Unix epoch, UTC.
    day       INTEGER NOT NULL,
    messages  INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    PRIMARY KEY (client_id, day)
) WITHOUT ROWID;
CREATE INDEX client_usage_by_day ON client_usage (day);
