-- What each client stored per UTC day, group messages and welcomes together: the daily
-- storage quota (--daily-message-quota, --daily-byte-quota). Updated in the transaction that
-- stores (its rows are locked until then, so relay processes sharing the database count
-- together); rows of past days are pruned.
CREATE TABLE client_usage (
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    -- Days since the Unix epoch, UTC.
    day       BIGINT NOT NULL,
    messages  BIGINT NOT NULL,
    bytes     BIGINT NOT NULL,
    PRIMARY KEY (client_id, day)
);
CREATE INDEX client_usage_by_day ON client_usage (day);
