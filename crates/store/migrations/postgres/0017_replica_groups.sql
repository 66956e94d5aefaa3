-- On an upstream: the groups each downstream replica (by its token's name) may propose
-- approvals and upload its approvers' signatures for, relayed from the site.
CREATE TABLE replica_groups (
    replica    TEXT NOT NULL,
    group_name TEXT NOT NULL,
    PRIMARY KEY (replica, group_name)
);
