-- When we left the DGroup (our clock, milliseconds since the Unix epoch), PROTOCOL.md
-- "Leave"; NULL while we have not. Leaving also sets we_removed.
ALTER TABLE dmls_dgroup ADD COLUMN left_ms INTEGER;
-- The DGroup's name register (PROTOCOL.md "Group name"): `name` holds its name, these its
-- clock and who set it ('' for the config's name, clock 0).
ALTER TABLE dmls_dgroup ADD COLUMN name_clock INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dmls_dgroup ADD COLUMN name_set_by TEXT NOT NULL DEFAULT '';
