-- 0006: job progress across the pair.
--
-- peer_state: for a job accepted here and replicated, the state the peer
-- last acknowledged for its replica (NULL: the state it was copied in,
-- `received`). A job whose state differs has news for the peer; the stream
-- sends it until the peer acknowledges, across reconnections.
--
-- replica_done_at: for a replica, when this server learned (by its own
-- clock: the two clocks never order anything) that its owner finished it;
-- the retention period counts from here.
--
-- pages_removed_at: for a replica, when its page files were removed (its
-- owner reported it done and the retention period passed). The row stays:
-- each server keeps the history of the other's jobs.

ALTER TABLE jobs ADD COLUMN peer_state TEXT;
ALTER TABLE jobs ADD COLUMN replica_done_at TEXT;
ALTER TABLE jobs ADD COLUMN pages_removed_at TEXT;
