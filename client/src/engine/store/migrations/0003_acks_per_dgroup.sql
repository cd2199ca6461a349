-- Acknowledgements as one row per DGroup and member: the latest acknowledged epoch of each
-- Send Group, as 40-byte entries (Send Group id, then the epoch as a big-endian u64) sorted by
-- group id (`store/acks.rs`). The rows of `dmls_ack` move here; acks of Send Groups we do not
-- know are dropped (nothing reads them).
CREATE TABLE dmls_acks (
    dgroup_id BLOB NOT NULL,
    acker TEXT NOT NULL,
    acks BLOB NOT NULL,
    PRIMARY KEY (dgroup_id, acker)
) WITHOUT ROWID;
INSERT INTO dmls_acks(dgroup_id, acker, acks)
SELECT s.dgroup_id, a.acker,
       unhex(group_concat(hex(a.group_id) || printf('%016X', a.epoch), '' ORDER BY a.group_id))
FROM dmls_ack a JOIN dmls_send_group s ON s.group_id = a.group_id
WHERE length(a.group_id) = 32
GROUP BY s.dgroup_id, a.acker;
DROP TABLE dmls_ack;
