-- 0002: what the pair needs from the store.
--
-- Epochs are ordered as (number, server id): every configuration row now
-- carries the id of the server whose epoch stamped it, next to the number,
-- so two primaries that took the same number are still told apart. Rows
-- written before this migration keep the all-zero id (no primary yet had
-- one); any real epoch of the same number is newer.
--
-- Jobs gain what replication and takeover need:
--   * acceptor_server: the server id that accepted the job (its
--     acknowledgement came from there);
--   * owner_server: the server id that processes it; the acceptor, until a
--     takeover moves it. Workers claim only jobs this server owns;
--   * seq: the acceptor's own monotonic sequence number, the cursor of job
--     replication (two servers' clocks never order anything);
--   * replica_state: `local` (accepted here, the peer has no copy yet),
--     `replicated` (accepted here, the peer stored a copy) or `replica` (a
--     copy of a job the peer accepted).
-- Existing rows get empty server ids; the gateway fills them with its own
-- id the first time it starts with this schema (they were all accepted and
-- owned by this server).

ALTER TABLE config_meta ADD COLUMN epoch_server TEXT NOT NULL DEFAULT '00000000000000000000000000000000';
ALTER TABLE config_docs ADD COLUMN epoch_server TEXT NOT NULL DEFAULT '00000000000000000000000000000000';
ALTER TABLE devices ADD COLUMN epoch_server TEXT NOT NULL DEFAULT '00000000000000000000000000000000';

ALTER TABLE jobs ADD COLUMN acceptor_server TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN owner_server TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN seq INTEGER;
ALTER TABLE jobs ADD COLUMN replica_state TEXT NOT NULL DEFAULT 'local'
    CHECK (replica_state IN ('local', 'replicated', 'replica'));

CREATE UNIQUE INDEX jobs_by_acceptor_seq ON jobs (acceptor_server, seq);
CREATE INDEX jobs_by_owner_state ON jobs (owner_server, state, received_at);
