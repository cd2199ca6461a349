-- Our clock when we stored the PSK (NULL in rows stored before, and when the operation had no
-- clock); members that have not acknowledged it since are behind (`evict.rs`).
ALTER TABLE dmls_psk ADD COLUMN stored_ms INTEGER;
