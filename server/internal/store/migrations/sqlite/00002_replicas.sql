-- The replicas registry and the cluster's settings (migrations/mysql has the
-- same tables).
--
-- replicas: one row per replica id: where its peers reach it, its version,
-- when it registered and its last heartbeat, both on the database's clock
-- (here SQLite's own time function: the one process's clock, UTC text
-- 'YYYY-MM-DD HH:MM:SS.SSS', which orders as it compares). incarnation names
-- the process that holds the row (a new one at each registration); beats
-- counts its heartbeats, so that each heartbeat's UPDATE changes a column.
--
-- cluster_settings: named values every replica of the store shares: the
-- fingerprints of the agent CA and of the access-key sealing key (never the
-- key), and the row that registrations lock to run one at a time.

-- +goose Up
CREATE TABLE replicas (
	id             VARCHAR(128) NOT NULL PRIMARY KEY,
	advertise_addr VARCHAR(255) NOT NULL,
	version        VARCHAR(64)  NOT NULL,
	incarnation    VARCHAR(64)  NOT NULL,
	beats          BIGINT       NOT NULL,
	started_at     DATETIME(6)  NOT NULL,
	heartbeat_at   DATETIME(6)  NOT NULL
);

CREATE TABLE cluster_settings (
	name  VARCHAR(64)  NOT NULL PRIMARY KEY,
	value VARCHAR(255) NOT NULL
);
INSERT INTO cluster_settings (name, value) VALUES ('replicas.registration', '');

-- +goose Down
DROP TABLE cluster_settings;
DROP TABLE replicas;
