-- 0004: replays that outlive the session.
--
-- A device keeps every scanned job in its outbox until a server acknowledges
-- it, and may have to replay it after the person logged out. At logout the
-- device says how many jobs the session scanned; the server keeps that
-- count with the ended session, and accepts replays of jobs numbered up to
-- it (each job carries its number within the session), never a new job.
-- NULL: the device did not say, so no replay after logout is accepted.

ALTER TABLE ended_sessions ADD COLUMN jobs_scanned INTEGER;
