-- Callback outbox: one row per callback to send, one row per attempt at sending it.
-- task_id names a task of the queue as plain text (no foreign key: the queue owns its tables).
create table callback_deliveries (
    id               text primary key,
    task_id          text not null,
    event            text not null,
    url              text not null,
    body             bytea not null,
    status           text not null default 'pending'
                     check (status in ('pending', 'delivered', 'failed')),
    idempotency_key  text unique,
    created_at       timestamptz not null,
    next_attempt_at  timestamptz not null,
    attempts         integer not null default 0,
    last_status_code integer,
    last_error       text,
    finished_at      timestamptz,
    lease_owner      text,
    lease_token      bigint not null default 0,
    lease_expires_at timestamptz
);

create index callback_deliveries_due on callback_deliveries (next_attempt_at)
    where status = 'pending';

create index callback_deliveries_task on callback_deliveries (task_id, created_at);

create table callback_attempts (
    delivery_id text not null references callback_deliveries (id) on delete cascade,
    number      integer not null,
    started_at  timestamptz not null,
    duration_ms integer not null,
    outcome     text not null check (outcome in ('delivered', 'retry', 'gave_up', 'refused')),
    status_code integer,
    error       text,
    primary key (delivery_id, number)
);
