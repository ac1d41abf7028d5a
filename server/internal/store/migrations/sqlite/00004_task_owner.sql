-- A task's owner: the replica that runs its DAG, and the only one that
-- writes it. owner_epoch is a fencing token: each claim of the task (by a
-- replica adopting the tasks of a dead one, by a restarted replica, or by
-- an operator's operation received on another replica) adds one, and every
-- write of the task is a compare-and-swap on (owner_replica, owner_epoch),
-- so a replica that lost the task (paused, partitioned) writes nothing
-- more. Tasks made before this migration have no owner (''): the first
-- replica to sweep claims them. tasks_owner serves the sweep's and the
-- restart's queries (running tasks by owner).

-- +goose Up
ALTER TABLE tasks ADD COLUMN owner_replica VARCHAR(128) NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0;
CREATE INDEX tasks_owner ON tasks (status, owner_replica, id);
