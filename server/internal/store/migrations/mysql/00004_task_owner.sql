-- A task's owner and its fencing epoch: the same columns and index as
-- migrations/sqlite/00004_task_owner.sql (see there). One DDL statement:
-- MySQL commits it by itself.

-- +goose Up
ALTER TABLE tasks
	ADD COLUMN owner_replica VARCHAR(128) NOT NULL DEFAULT '',
	ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0,
	ADD INDEX tasks_owner (status, owner_replica, id);
