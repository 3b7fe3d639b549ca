-- 0008: who owns a job, across the pair, and what the admin is told.
--
-- owner_term: how many times the job's ownership moved (a takeover of a
-- silent owner's jobs, or a handover at a clean stop). Each move sets the
-- new owner with the next term; news of a job's ownership is taken only
-- from a higher term, so two servers never hold one job in one term with
-- different owners, and a late message never moves a job back.
--
-- rev / peer_rev: the job's progress revision (state, reason, owner, term
-- or any step attempt changed) and the last one the peer acknowledged.
-- Triggers count the revision, so no write can forget it. A job whose
-- peer has a copy and whose rev is ahead of peer_rev has news for the peer;
-- it replaces the state-based peer_state of 0006, which is no longer read.
--
-- taken_over_from / taken_over_at / takeover_epoch / takeover_count /
-- taken_at_step: the takeover that gave this server the job (from which
-- server, when by this server's clock, the newest epoch it had seen, which
-- of its takeovers, and how many leading steps were already done: steps
-- from there on are run here).
--
-- pair_events: what the admin was told about jobs across the pair —
-- takeovers, handovers, jobs learnt to be taken over, possible duplicate
-- deliveries (the two documented exceptions) and second copies a
-- destination refused. Kept as history.

ALTER TABLE jobs ADD COLUMN owner_term INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN peer_rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN taken_over_from TEXT;
ALTER TABLE jobs ADD COLUMN taken_over_at TEXT;
ALTER TABLE jobs ADD COLUMN takeover_epoch TEXT;
ALTER TABLE jobs ADD COLUMN takeover_count INTEGER;
ALTER TABLE jobs ADD COLUMN taken_at_step INTEGER;

CREATE INDEX jobs_with_news ON jobs (rev, peer_rev) WHERE rev > peer_rev;

CREATE TRIGGER jobs_rev_on_change AFTER UPDATE OF state, reason, owner_server, owner_term ON jobs
BEGIN
    UPDATE jobs SET rev = rev + 1 WHERE id = NEW.id;
END;

CREATE TRIGGER jobs_rev_on_step_insert AFTER INSERT ON job_steps
BEGIN
    UPDATE jobs SET rev = rev + 1 WHERE id = NEW.job_id;
END;

CREATE TRIGGER jobs_rev_on_step_update AFTER UPDATE ON job_steps
BEGIN
    UPDATE jobs SET rev = rev + 1 WHERE id = NEW.job_id;
END;

CREATE TABLE pair_events (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,
    job_id  TEXT,
    peer    TEXT,
    detail  TEXT NOT NULL
) STRICT;

CREATE INDEX pair_events_by_kind ON pair_events (kind, id);
