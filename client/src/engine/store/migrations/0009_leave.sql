-- When we left the DGroup (our clock, milliseconds since the Unix epoch), PROTOCOL.md
-- "Leave"; NULL while we have not. Leaving also sets we_removed.
ALTER TABLE dmls_dgroup ADD COLUMN left_ms INTEGER;
