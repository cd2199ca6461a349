-- Send Groups we joined through our last-resort key package, with the encryption key of the
-- leaf we joined with: until the owner commits a leaf refresh that replaces it, we propose one
-- in every epoch (docs/PROTOCOL.md "Key packages").
CREATE TABLE dmls_last_resort_leaf (
    group_id BLOB PRIMARY KEY,
    encryption_key BLOB NOT NULL
) WITHOUT ROWID;
