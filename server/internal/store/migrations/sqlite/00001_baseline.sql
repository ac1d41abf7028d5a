-- The baseline: the whole schema as the frozen legacy migrations leave it
-- (legacy.go), column order included, so that a legacy data dir adopted at
-- this version and a new one are the same database. SQLite runs this file in
-- one transaction: it applies whole or not at all.

-- +goose Up
CREATE TABLE hosts (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	name           VARCHAR(255)  NOT NULL UNIQUE,
	inner_ip       VARCHAR(64)   NOT NULL DEFAULT '',
	machine_id     VARCHAR(64)   NOT NULL DEFAULT '',
	status         VARCHAR(16)   NOT NULL,
	agent_status   VARCHAR(16)   NOT NULL DEFAULT '',
	agentd_version VARCHAR(64)   NOT NULL DEFAULT '',
	last_seen      BIGINT        NOT NULL DEFAULT 0,
	op_task_id     BIGINT        NULL,
	processes      TEXT          NOT NULL,
	create_time    BIGINT        NOT NULL,
	update_time    BIGINT        NOT NULL,
	install_home   VARCHAR(1024) NOT NULL DEFAULT '',
	revoke_time    BIGINT        NOT NULL DEFAULT 0
);
-- A task's host locks are released by task id when it ends.
CREATE INDEX hosts_op_task ON hosts (op_task_id);

CREATE TABLE tasks (
	id                 INTEGER PRIMARY KEY AUTOINCREMENT,
	name               VARCHAR(128) NOT NULL,
	type               VARCHAR(16)  NOT NULL,
	operation          VARCHAR(16)  NOT NULL,
	status             VARCHAR(16)  NOT NULL,
	creator            VARCHAR(64)  NOT NULL,
	executor           VARCHAR(128) NOT NULL,
	host_id            BIGINT       NOT NULL,
	task_definition_id BIGINT       NOT NULL,
	context            TEXT         NOT NULL,
	start_time         BIGINT       NOT NULL,
	end_time           BIGINT       NOT NULL DEFAULT 0,
	update_time        BIGINT       NOT NULL
);
CREATE INDEX tasks_host ON tasks (host_id, id);
CREATE INDEX tasks_status ON tasks (status, id);

CREATE TABLE subtasks (
	id                INTEGER PRIMARY KEY AUTOINCREMENT,
	task_id           BIGINT       NOT NULL REFERENCES tasks (id),
	seq               INT          NOT NULL,
	name              VARCHAR(128) NOT NULL,
	description       VARCHAR(255) NOT NULL,
	class_name        VARCHAR(255) NOT NULL,
	node_type         VARCHAR(32)  NOT NULL,
	operation         VARCHAR(16)  NOT NULL,
	status            VARCHAR(16)  NOT NULL,
	series_id         INT          NOT NULL,
	upstreams         TEXT         NOT NULL,
	downstreams       TEXT         NOT NULL,
	timeout_s         INT          NOT NULL,
	run_time          INT          NOT NULL,
	parallel_idx      INT          NOT NULL,
	prohibit_rollback INT          NOT NULL,
	host_id           BIGINT       NOT NULL,
	executor          VARCHAR(128) NOT NULL DEFAULT '',
	start_time        BIGINT       NOT NULL DEFAULT 0,
	end_time          BIGINT       NOT NULL DEFAULT 0,
	message           TEXT         NOT NULL
);
CREATE INDEX subtasks_task ON subtasks (task_id, seq);
CREATE INDEX subtasks_host ON subtasks (host_id, task_id);

-- Bounded subtask logs (logs.go): each line's kind (0 text, 1 attempt
-- header, 2 marker of dropped lines) and size in bytes.
CREATE TABLE subtask_logs (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	subtask_id BIGINT NOT NULL REFERENCES subtasks (id),
	run_time   INT    NOT NULL,
	at         BIGINT NOT NULL,
	line       TEXT   NOT NULL,
	kind       INT    NOT NULL DEFAULT 0,
	size       INT    NOT NULL DEFAULT 0
);
CREATE INDEX subtask_logs_subtask ON subtask_logs (subtask_id, id);

-- Each log's counters, so that an append never scans the log.
CREATE TABLE subtask_log_sizes (
	subtask_id    BIGINT NOT NULL PRIMARY KEY,
	lines         BIGINT NOT NULL,
	bytes         BIGINT NOT NULL,
	dropped_lines BIGINT NOT NULL DEFAULT 0,
	dropped_bytes BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE users (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	username      VARCHAR(64)  NOT NULL UNIQUE,
	password_hash VARCHAR(255) NOT NULL,
	roles         TEXT         NOT NULL,
	create_time   BIGINT       NOT NULL
);

-- Idempotency-Key: one task per (caller, key).
CREATE TABLE idempotency_keys (
	scope       VARCHAR(255) NOT NULL PRIMARY KEY,
	fingerprint VARCHAR(255) NOT NULL,
	task_id     BIGINT       NOT NULL,
	create_time BIGINT       NOT NULL
);

-- Agent identity: single-use join tokens (stored hashed).
CREATE TABLE join_tokens (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	token_hash   VARCHAR(64)  NOT NULL UNIQUE,
	host_name    VARCHAR(255) NOT NULL DEFAULT '',
	creator      VARCHAR(64)  NOT NULL,
	create_time  BIGINT       NOT NULL,
	expire_time  BIGINT       NOT NULL,
	used_time    BIGINT       NOT NULL DEFAULT 0,
	used_host_id BIGINT       NOT NULL DEFAULT 0
);

-- API access keys: the secret is stored sealed.
CREATE TABLE access_keys (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	access_key_id  VARCHAR(64) NOT NULL UNIQUE,
	username       VARCHAR(64) NOT NULL,
	sealed_secret  TEXT        NOT NULL,
	create_time    BIGINT      NOT NULL,
	last_used_time BIGINT      NOT NULL DEFAULT 0
);
CREATE INDEX access_keys_user ON access_keys (username, id);

-- Audit: who did what, when, and how it ended.
CREATE TABLE audit_events (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	at            BIGINT       NOT NULL,
	username      VARCHAR(64)  NOT NULL,
	access_key_id VARCHAR(64)  NOT NULL DEFAULT '',
	source_addr   VARCHAR(128) NOT NULL DEFAULT '',
	operation     VARCHAR(128) NOT NULL,
	host_id       BIGINT       NOT NULL DEFAULT 0,
	task_id       BIGINT       NOT NULL DEFAULT 0,
	target        VARCHAR(255) NOT NULL DEFAULT '',
	outcome       VARCHAR(32)  NOT NULL,
	message       TEXT         NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at, id);

-- Subtask ids are taken in ranges before insert (allocIDs), so that a
-- task's subtasks are stored with their edges in multi-row INSERTs.
CREATE TABLE id_sequences (
	name    VARCHAR(64) NOT NULL PRIMARY KEY,
	next_id BIGINT      NOT NULL
);
INSERT INTO id_sequences (name, next_id) VALUES ('subtasks', 1);

-- The health probe's one row (health.go): a write that tests the store is
-- writable, when no other write has lately.
CREATE TABLE store_probe (
	id INT    NOT NULL PRIMARY KEY,
	at BIGINT NOT NULL
);
INSERT INTO store_probe (id, at) VALUES (1, 0);

-- Agent client certificates, by serial (lowercase hex): a host's live
-- certificates, revocable one by one; "legacy" ones were issued before this
-- table and recorded at their first use.
CREATE TABLE agent_certs (
	serial          VARCHAR(64)  NOT NULL PRIMARY KEY,
	host_id         BIGINT       NOT NULL,
	not_before      BIGINT       NOT NULL,
	not_after       BIGINT       NOT NULL,
	source          VARCHAR(16)  NOT NULL,
	source_addr     VARCHAR(255) NOT NULL DEFAULT '',
	create_time     BIGINT       NOT NULL,
	first_used_time BIGINT       NOT NULL DEFAULT 0,
	revoke_time     BIGINT       NOT NULL DEFAULT 0
);
CREATE INDEX agent_certs_host ON agent_certs (host_id, revoke_time);
