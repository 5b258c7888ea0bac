-- The durable work queue (forgeline.adapters.queue.sqlite).
--
-- Times are UTC ISO-8601 text of one fixed width ("2026-11-25T02:03:29.123456Z"), so text
-- comparison is time comparison. `seq` (the rowid) gives the first-in-first-out order;
-- `lease_token` is the fencing token, incremented by every claim.
create table tasks (
    seq              integer primary key autoincrement,
    id               text not null unique,
    kind             text not null,
    payload          text not null,
    status           text not null default 'queued'
                     check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    priority         integer not null default 0,
    attempts         integer not null default 0,
    max_attempts     integer not null check (max_attempts >= 1),
    created_at       text not null,
    updated_at       text not null,
    run_after        text not null,
    concurrency_key  text,
    idempotency_key  text unique,
    worker           text,
    lease_token      integer not null default 0,
    lease_expires_at text,
    cancel_requested integer not null default 0,
    started_at       text,
    finished_at      text,
    last_error       text,
    result           text
);

-- Claim order: status first so that the planner walks it for `status = 'queued'` in claim
-- order, with no sort (a partial index lost to tasks_list_idx and sorted every queued row).
create index tasks_claim_idx on tasks (status, priority desc, seq);
create index tasks_key_queued_idx on tasks (concurrency_key, seq)
    where status = 'queued' and concurrency_key is not null;
create unique index tasks_key_running_idx on tasks (concurrency_key)
    where status = 'running' and concurrency_key is not null;
create index tasks_lease_idx on tasks (lease_expires_at) where status = 'running';
create index tasks_list_idx on tasks (status, seq);
