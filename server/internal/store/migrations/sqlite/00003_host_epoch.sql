-- The host's stream epoch, a fencing token: every agent stream the server
-- accepts for the host adds one, in the write that marks it ONLINE
-- (RegisterHost). The server sends it with the stream's commands; agentd
-- refuses a command whose epoch is older than the newest it has seen.

-- +goose Up
ALTER TABLE hosts ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
