-- The commits merged in each Send Group, for `dmls graph`: the epoch each one left, the
-- epochs of other Send Groups it imported (PSKs, 40-byte entries: group id then big-endian
-- epoch) and the members it removed (comma-separated client ids). Only the latest epochs of
-- each Send Group are kept (store/commit_log.rs).
CREATE TABLE dmls_commit_log (
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    imports BLOB NOT NULL,
    removed TEXT NOT NULL,
    PRIMARY KEY (group_id, epoch)
) WITHOUT ROWID;
