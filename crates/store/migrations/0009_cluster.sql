-- Leases several server nodes take through the database: the one holding `jobs` runs the
-- background jobs, until its lease expires unrenewed.
CREATE TABLE leases (
    name       TEXT   NOT NULL PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
