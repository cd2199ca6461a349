-- Removed owner only: 1 once every other member's Send Group we hold has dropped it, so no
-- commit can import a later epoch of it; its kept commits are deleted, later ones dropped.
ALTER TABLE dmls_send_group ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;
