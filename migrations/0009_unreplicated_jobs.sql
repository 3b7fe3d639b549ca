-- 0009: the jobs still waiting for their copy on the peer, found without
-- reading the others.
--
-- The replication stream asks for the next jobs to copy every round, and
-- counts those left after every answer from the peer. Through the index
-- on (acceptor_server, seq) both read every job the server ever accepted
-- to find the few still marked 'local', so each round cost more as the
-- table grew. This index holds only the jobs that wait for a copy.

CREATE INDEX jobs_unreplicated ON jobs (acceptor_server, seq) WHERE replica_state = 'local';
