-- 0005: configuration replication across the pair.
--
-- config_lineage: where each primary's line of configuration ended. When a
-- primary writes its first change under a new epoch, the configuration it
-- held until then (version V of epoch E) becomes history: the row (E, V)
-- says "every change of epoch E up to version V is part of this line".
-- It travels with every snapshot, so a server that receives a snapshot can
-- tell which of its own changes the sender's line contains (an ancestor)
-- and which it does not (made by a primary that was since replaced: a
-- conflict).
--
-- config_conflicts: the configuration changes a fenced primary made that
-- the new primary's line does not contain, kept for an admin to review and
-- re-apply (`gateway pair conflicts`). Never silently dropped. The id is
-- derived from the content (kind, name, stamp), so both servers of the
-- pair give one conflict the same id.

CREATE TABLE config_lineage (
    epoch        INTEGER NOT NULL,
    epoch_server TEXT NOT NULL,
    last_version INTEGER NOT NULL,
    PRIMARY KEY (epoch, epoch_server)
);

CREATE TABLE config_conflicts (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('document', 'device')),
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    epoch        TEXT NOT NULL,
    body         TEXT NOT NULL,
    -- The server whose change it was, and the configuration it was
    -- compared with (the new primary's stamp).
    origin       TEXT NOT NULL,
    against      TEXT NOT NULL,
    found_at     TEXT NOT NULL,
    applied_at   TEXT,
    applied_as   TEXT
);
