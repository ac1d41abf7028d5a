-- The baseline: the same schema as migrations/sqlite/00001_baseline.sql (the
-- tables, columns in order, indexes, keys and foreign keys), in the words of
-- MySQL and of OceanBase's MySQL mode:
--   * keys are BIGINT AUTO_INCREMENT; the other types are SQLite's;
--   * text SQLite holds as TEXT is MEDIUMTEXT where its size follows the
--     input (a task's context, a DAG's edges, messages, log lines, a host's
--     processes) and TEXT where it is small (roles, a sealed secret);
--   * utf8mb4 with the binary collation: names and keys compare byte for
--     byte, as in SQLite, and every indexed VARCHAR (at most 255 characters,
--     1,020 bytes) is within InnoDB's 3,072-byte key limit;
--   * indexes and foreign keys are declared inside CREATE TABLE (InnoDB
--     ignores a column's inline REFERENCES).
-- MySQL commits each DDL statement by itself, so a server that dies in the
-- middle of this file leaves some tables behind and no version recorded:
-- every statement is written to run again harmlessly (IF NOT EXISTS, INSERT
-- IGNORE of constant rows), and the next start finishes the file.
-- `lines` is a reserved word in MySQL: it is quoted.

-- +goose Up
CREATE TABLE IF NOT EXISTS hosts (
	id             BIGINT        NOT NULL AUTO_INCREMENT,
	name           VARCHAR(255)  NOT NULL,
	inner_ip       VARCHAR(64)   NOT NULL DEFAULT '',
	machine_id     VARCHAR(64)   NOT NULL DEFAULT '',
	status         VARCHAR(16)   NOT NULL,
	agent_status   VARCHAR(16)   NOT NULL DEFAULT '',
	agentd_version VARCHAR(64)   NOT NULL DEFAULT '',
	last_seen      BIGINT        NOT NULL DEFAULT 0,
	op_task_id     BIGINT        NULL,
	processes      MEDIUMTEXT    NOT NULL,
	create_time    BIGINT        NOT NULL,
	update_time    BIGINT        NOT NULL,
	install_home   VARCHAR(1024) NOT NULL DEFAULT '',
	revoke_time    BIGINT        NOT NULL DEFAULT 0,
	PRIMARY KEY (id),
	UNIQUE KEY hosts_name (name),
	KEY hosts_op_task (op_task_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS tasks (
	id                 BIGINT       NOT NULL AUTO_INCREMENT,
	name               VARCHAR(128) NOT NULL,
	type               VARCHAR(16)  NOT NULL,
	operation          VARCHAR(16)  NOT NULL,
	status             VARCHAR(16)  NOT NULL,
	creator            VARCHAR(64)  NOT NULL,
	executor           VARCHAR(128) NOT NULL,
	host_id            BIGINT       NOT NULL,
	task_definition_id BIGINT       NOT NULL,
	context            MEDIUMTEXT   NOT NULL,
	start_time         BIGINT       NOT NULL,
	end_time           BIGINT       NOT NULL DEFAULT 0,
	update_time        BIGINT       NOT NULL,
	PRIMARY KEY (id),
	KEY tasks_host (host_id, id),
	KEY tasks_status (status, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS subtasks (
	id                BIGINT       NOT NULL AUTO_INCREMENT,
	task_id           BIGINT       NOT NULL,
	seq               INT          NOT NULL,
	name              VARCHAR(128) NOT NULL,
	description       VARCHAR(255) NOT NULL,
	class_name        VARCHAR(255) NOT NULL,
	node_type         VARCHAR(32)  NOT NULL,
	operation         VARCHAR(16)  NOT NULL,
	status            VARCHAR(16)  NOT NULL,
	series_id         INT          NOT NULL,
	upstreams         MEDIUMTEXT   NOT NULL,
	downstreams       MEDIUMTEXT   NOT NULL,
	timeout_s         INT          NOT NULL,
	run_time          INT          NOT NULL,
	parallel_idx      INT          NOT NULL,
	prohibit_rollback INT          NOT NULL,
	host_id           BIGINT       NOT NULL,
	executor          VARCHAR(128) NOT NULL DEFAULT '',
	start_time        BIGINT       NOT NULL DEFAULT 0,
	end_time          BIGINT       NOT NULL DEFAULT 0,
	message           MEDIUMTEXT   NOT NULL,
	PRIMARY KEY (id),
	KEY subtasks_task (task_id, seq),
	KEY subtasks_host (host_id, task_id),
	CONSTRAINT subtasks_task_fk FOREIGN KEY (task_id) REFERENCES tasks (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS subtask_logs (
	id         BIGINT     NOT NULL AUTO_INCREMENT,
	subtask_id BIGINT     NOT NULL,
	run_time   INT        NOT NULL,
	at         BIGINT     NOT NULL,
	line       MEDIUMTEXT NOT NULL,
	kind       INT        NOT NULL DEFAULT 0,
	size       INT        NOT NULL DEFAULT 0,
	PRIMARY KEY (id),
	KEY subtask_logs_subtask (subtask_id, id),
	CONSTRAINT subtask_logs_subtask_fk FOREIGN KEY (subtask_id) REFERENCES subtasks (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS subtask_log_sizes (
	subtask_id    BIGINT NOT NULL,
	`lines`       BIGINT NOT NULL,
	bytes         BIGINT NOT NULL,
	dropped_lines BIGINT NOT NULL DEFAULT 0,
	dropped_bytes BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (subtask_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS users (
	id            BIGINT       NOT NULL AUTO_INCREMENT,
	username      VARCHAR(64)  NOT NULL,
	password_hash VARCHAR(255) NOT NULL,
	roles         TEXT         NOT NULL,
	create_time   BIGINT       NOT NULL,
	PRIMARY KEY (id),
	UNIQUE KEY users_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS idempotency_keys (
	scope       VARCHAR(255) NOT NULL,
	fingerprint VARCHAR(255) NOT NULL,
	task_id     BIGINT       NOT NULL,
	create_time BIGINT       NOT NULL,
	PRIMARY KEY (scope)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS join_tokens (
	id           BIGINT       NOT NULL AUTO_INCREMENT,
	token_hash   VARCHAR(64)  NOT NULL,
	host_name    VARCHAR(255) NOT NULL DEFAULT '',
	creator      VARCHAR(64)  NOT NULL,
	create_time  BIGINT       NOT NULL,
	expire_time  BIGINT       NOT NULL,
	used_time    BIGINT       NOT NULL DEFAULT 0,
	used_host_id BIGINT       NOT NULL DEFAULT 0,
	PRIMARY KEY (id),
	UNIQUE KEY join_tokens_token_hash (token_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS access_keys (
	id             BIGINT      NOT NULL AUTO_INCREMENT,
	access_key_id  VARCHAR(64) NOT NULL,
	username       VARCHAR(64) NOT NULL,
	sealed_secret  TEXT        NOT NULL,
	create_time    BIGINT      NOT NULL,
	last_used_time BIGINT      NOT NULL DEFAULT 0,
	PRIMARY KEY (id),
	UNIQUE KEY access_keys_access_key_id (access_key_id),
	KEY access_keys_user (username, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS audit_events (
	id            BIGINT       NOT NULL AUTO_INCREMENT,
	at            BIGINT       NOT NULL,
	username      VARCHAR(64)  NOT NULL,
	access_key_id VARCHAR(64)  NOT NULL DEFAULT '',
	source_addr   VARCHAR(128) NOT NULL DEFAULT '',
	operation     VARCHAR(128) NOT NULL,
	host_id       BIGINT       NOT NULL DEFAULT 0,
	task_id       BIGINT       NOT NULL DEFAULT 0,
	target        VARCHAR(255) NOT NULL DEFAULT '',
	outcome       VARCHAR(32)  NOT NULL,
	message       MEDIUMTEXT   NOT NULL,
	PRIMARY KEY (id),
	KEY audit_events_at (at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS id_sequences (
	name    VARCHAR(64) NOT NULL,
	next_id BIGINT      NOT NULL,
	PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT IGNORE INTO id_sequences (name, next_id) VALUES ('subtasks', 1);

CREATE TABLE IF NOT EXISTS store_probe (
	id INT    NOT NULL,
	at BIGINT NOT NULL,
	PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT IGNORE INTO store_probe (id, at) VALUES (1, 0);

CREATE TABLE IF NOT EXISTS agent_certs (
	serial          VARCHAR(64)  NOT NULL,
	host_id         BIGINT       NOT NULL,
	not_before      BIGINT       NOT NULL,
	not_after       BIGINT       NOT NULL,
	source          VARCHAR(16)  NOT NULL,
	source_addr     VARCHAR(255) NOT NULL DEFAULT '',
	create_time     BIGINT       NOT NULL,
	first_used_time BIGINT       NOT NULL DEFAULT 0,
	revoke_time     BIGINT       NOT NULL DEFAULT 0,
	PRIMARY KEY (serial),
	KEY agent_certs_host (host_id, revoke_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
