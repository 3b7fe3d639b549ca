-- 0007: one job id accepted by both servers.
--
-- While the two servers of a pair cannot reach each other, a device that
-- fails over may submit the same job id to both, and both accept it. When
-- the replication stream brings the two together, exactly one keeps the
-- job: the one that has started delivering it, else the one with the
-- smaller server id. The other records here who keeps it and never
-- processes its copy (superseded_by: that server's id). When both had
-- started, neither can be stopped: both_delivered_with names the other
-- server, and the case is counted and reported (the partition exception of
-- the delivery guarantee).

ALTER TABLE jobs ADD COLUMN superseded_by TEXT;
ALTER TABLE jobs ADD COLUMN both_delivered_with TEXT;
