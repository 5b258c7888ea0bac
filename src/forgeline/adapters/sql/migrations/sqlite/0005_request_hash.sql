-- The digest of the request that made a task, kept beside its idempotency key: the same
-- key sent again with another request is refused instead of answered with this task.
-- Tasks stored before this column have none, and match any request.
alter table tasks add column request_hash text;
