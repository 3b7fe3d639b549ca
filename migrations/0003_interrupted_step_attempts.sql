-- 0003: a step attempt can end as `interrupted`.
--
-- An attempt that was running when the server died (crash, kill -9, power
-- loss) used to stay without an outcome forever, as if still running. At
-- start-up the data service now closes such attempts as `interrupted`, with
-- the time of recovery as their end; the step then runs again as a new
-- attempt. An interrupted attempt still counts as an attempt.
--
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt
-- with the wider check and its rows copied over. Nothing refers to
-- job_steps, and it has no indexes besides its primary key.

CREATE TABLE job_steps_new (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    plugin      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT CHECK (outcome IN ('done', 'retry', 'failed', 'interrupted')),
    reason      TEXT,
    PRIMARY KEY (job_id, step, attempt)
) STRICT;

INSERT INTO job_steps_new (job_id, step, attempt, plugin, started_at, finished_at, outcome, reason)
    SELECT job_id, step, attempt, plugin, started_at, finished_at, outcome, reason FROM job_steps;

DROP TABLE job_steps;

ALTER TABLE job_steps_new RENAME TO job_steps;
