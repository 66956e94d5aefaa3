-- After a restore from a backup: the highest version of each role devices may already trust
-- (found on the transparency log's tail, which outlived the backup in the content store), so
-- the server never signs that version number again and moves past it. `#holds` is the
-- rollout holds document's.
CREATE TABLE version_floors (
    role    TEXT   NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL
);
