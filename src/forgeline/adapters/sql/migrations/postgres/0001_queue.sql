-- The durable work queue (forgeline.adapters.queue.postgres).
--
-- One row per task. `seq` gives the first-in-first-out order (ids are random UUIDs);
-- `lease_token` is the fencing token, incremented by every claim.
create table tasks (
    id               text primary key,
    seq              bigint generated always as identity unique,
    kind             text not null,
    payload          jsonb not null,
    status           text not null default 'queued'
                     check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    priority         integer not null default 0,
    attempts         integer not null default 0,
    max_attempts     integer not null check (max_attempts >= 1),
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    run_after        timestamptz not null default now(),
    concurrency_key  text,
    idempotency_key  text,
    worker           text,
    lease_token      bigint not null default 0,
    lease_expires_at timestamptz,
    cancel_requested boolean not null default false,
    started_at       timestamptz,
    finished_at      timestamptz,
    last_error       text,
    result           jsonb
);

-- Claim order among queued tasks: higher priority first, then oldest.
create index tasks_claim_idx on tasks (priority desc, seq) where status = 'queued';
-- "Is an earlier task of this key still queued?" (first in, first out within a key).
create index tasks_key_queued_idx on tasks (concurrency_key, seq)
    where status = 'queued' and concurrency_key is not null;
-- At most one running task per concurrency key, enforced by the database itself.
create unique index tasks_key_running_idx on tasks (concurrency_key)
    where status = 'running' and concurrency_key is not null;
-- Recovery of expired leases.
create index tasks_lease_idx on tasks (lease_expires_at) where status = 'running';
-- One task per idempotency key; tasks without a key (most) stay out of the index. Every
-- index here costs a write per claim and per completion (status changes defeat HOT
-- updates), so the set is kept to what the queries need: `list` walks `seq` backwards,
-- `count` of queued tasks uses the partial indexes above.
create unique index tasks_idempotency_idx on tasks (idempotency_key)
    where idempotency_key is not null;

-- Wake idle workers when tasks are inserted (one notification per statement, so a batch
-- of 20,000 tasks costs one). Updates that make work eligible notify from the adapter.
create function tasks_notify_work() returns trigger language plpgsql as $$
begin
    perform pg_notify('forgeline_work', '');
    return null;
end;
$$;

create trigger tasks_notify_work after insert on tasks
    for each statement execute function tasks_notify_work();
