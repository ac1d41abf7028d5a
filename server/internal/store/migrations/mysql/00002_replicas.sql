-- The replicas registry and the cluster's settings: the same tables as
-- migrations/sqlite/00002_replicas.sql (see there). Times on the database's
-- clock are DATETIME(6) in UTC (UTC_TIMESTAMP(6), as migratelock.go).
-- MySQL commits each DDL by itself: every statement here runs again
-- harmlessly (IF NOT EXISTS, INSERT IGNORE of a constant row), so a server
-- that died in the middle of this file finishes it at its next start.

-- +goose Up
CREATE TABLE IF NOT EXISTS replicas (
	id             VARCHAR(128) NOT NULL,
	advertise_addr VARCHAR(255) NOT NULL,
	version        VARCHAR(64)  NOT NULL,
	incarnation    VARCHAR(64)  NOT NULL,
	beats          BIGINT       NOT NULL,
	started_at     DATETIME(6)  NOT NULL,
	heartbeat_at   DATETIME(6)  NOT NULL,
	PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS cluster_settings (
	name  VARCHAR(64)  NOT NULL,
	value VARCHAR(255) NOT NULL,
	PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT IGNORE INTO cluster_settings (name, value) VALUES ('replicas.registration', '');

-- +goose Down
DROP TABLE IF EXISTS cluster_settings;
DROP TABLE IF EXISTS replicas;
