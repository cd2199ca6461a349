-- Welcome fan-out: a welcome's bytes are stored once in `welcome_bodies`, and every recipient's
-- inbox entry in `welcomes` refers to them. A body is deleted with the last entry that refers
-- to it (the relay does this when it deletes or prunes entries).
CREATE TABLE welcome_bodies (
    id   INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);

-- Every existing welcome keeps its id and gets a body of its own, with the same id.
INSERT INTO welcome_bodies (id, data) SELECT id, data FROM welcomes;

CREATE TABLE welcomes_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    sender      TEXT NOT NULL,
    body        INTEGER NOT NULL REFERENCES welcome_bodies (id),
    received_at INTEGER NOT NULL
);
INSERT INTO welcomes_new (id, recipient, sender, body, received_at)
    SELECT id, recipient, sender, id, received_at FROM welcomes;

-- Ids never go back: the new table goes on after the highest id the old one ever handed out
-- (deleted ones included), which AUTOINCREMENT keeps in sqlite_sequence.
DELETE FROM sqlite_sequence WHERE name = 'welcomes_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'welcomes_new', seq FROM sqlite_sequence WHERE name = 'welcomes';
DROP TABLE welcomes;
ALTER TABLE welcomes_new RENAME TO welcomes;

CREATE INDEX welcomes_by_recipient ON welcomes (recipient, id);
CREATE INDEX welcomes_by_received_at ON welcomes (received_at);
CREATE INDEX welcomes_by_body ON welcomes (body);
