-- Reserved for wip/ownership's task owner migration (00004): a placeholder on
-- wip/routing only, so that the versions stay consecutive; the merge takes
-- wip/ownership's file.

-- +goose Up
SELECT 1;
