-- PostgreSQL batches (issue 9): its twin leaves a change out of the indexes on `seq` until it is numbered. SQLite
-- numbers a change in the write that makes it: nothing changes here; the step keeps both databases at one version.
SELECT 1;
