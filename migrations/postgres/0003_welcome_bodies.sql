-- Welcome fan-out: a welcome's bytes are stored once in `welcome_bodies`, and every recipient's
-- inbox entry in `welcomes` refers to them. A body is deleted with the last entry that refers
-- to it (the relay does this when it deletes or prunes entries).
CREATE TABLE welcome_bodies (
    id   BIGSERIAL PRIMARY KEY,
    data BYTEA NOT NULL
);

-- Every existing welcome keeps its id and gets a body of its own, with the same id.
INSERT INTO welcome_bodies (id, data) SELECT id, data FROM welcomes;
SELECT setval(pg_get_serial_sequence('welcome_bodies', 'id'), COALESCE(MAX(id), 0) + 1, false)
    FROM welcome_bodies;

ALTER TABLE welcomes ADD COLUMN body BIGINT REFERENCES welcome_bodies (id);
UPDATE welcomes SET body = id;
ALTER TABLE welcomes ALTER COLUMN body SET NOT NULL;
ALTER TABLE welcomes DROP COLUMN data;
CREATE INDEX welcomes_by_body ON welcomes (body);
