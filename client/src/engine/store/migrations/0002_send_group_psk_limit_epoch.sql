-- Removed owner only: its commits are processed up to this epoch (> stop_epoch) because a
-- commit of another Send Group imports the PSK of that epoch (docs/PROTOCOL.md 'Removal race').
ALTER TABLE dmls_send_group ADD COLUMN psk_limit_epoch INTEGER;
