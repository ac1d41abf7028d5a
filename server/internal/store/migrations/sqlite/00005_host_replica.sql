-- Where each host's agent stream is: the id of the replica that registered
-- its newest stream, written with the epoch (RegisterHost). Replicas route a
-- host's commands there; a replica marks OFFLINE at start only its own
-- hosts ('' : rows from before replicas shared a fleet).

-- +goose Up
ALTER TABLE hosts ADD COLUMN replica_id VARCHAR(128) NOT NULL DEFAULT '';
