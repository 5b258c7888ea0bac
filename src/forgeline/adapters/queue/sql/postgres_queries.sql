-- Queries of the PostgreSQL queue adapter. Each runs as one statement in autocommit mode
-- (its own transaction, one round trip) unless the adapter opens a transaction around
-- several. Times come from the database clock (now()), the same for every worker.

-- name: insert_task
-- Insert one task; a clash on id (a retried insert) or idempotency key inserts nothing.
-- The statement trigger tasks_notify_work wakes idle workers.
insert into tasks (id, kind, payload, priority, max_attempts, run_after, concurrency_key,
                   idempotency_key, request_hash)
values (%(id)s, %(kind)s, %(payload)s::jsonb, %(priority)s, %(max_attempts)s,
        coalesce(%(run_after)s::timestamptz, now()), %(concurrency_key)s, %(idempotency_key)s,
        %(request_hash)s)
on conflict do nothing
returning id, seq, created_at, updated_at, run_after

-- name: insert_tasks
-- Insert a batch from parallel arrays in their order (so `seq` follows it); clashes insert
-- nothing, as above. One statement, one trigger notification for the whole batch. Only the
-- columns the database chose come back: the adapter knows the rest.
insert into tasks (id, kind, payload, priority, max_attempts, run_after, concurrency_key,
                   idempotency_key, request_hash)
select v.id, v.kind, v.payload::jsonb, v.priority, v.max_attempts, coalesce(v.run_after, now()),
       v.concurrency_key, v.idempotency_key, v.request_hash
from unnest(%(ids)s::text[], %(kinds)s::text[], %(payloads)s::text[], %(priorities)s::int[],
            %(max_attempts)s::int[], %(run_afters)s::timestamptz[], %(concurrency_keys)s::text[],
            %(idempotency_keys)s::text[], %(request_hashes)s::text[])
     with ordinality as v(id, kind, payload, priority, max_attempts, run_after,
                          concurrency_key, idempotency_key, request_hash, ord)
order by v.ord
on conflict do nothing
returning id, seq, created_at, updated_at, run_after

-- name: get_existing
-- The rows a batch insert did not return: ours under the same id (a retry) or the older
-- task of the same idempotency key.
select * from tasks where id = any(%(ids)s::text[]) or idempotency_key = any(%(keys)s::text[])

-- name: get_task
select * from tasks where id = %(id)s

-- name: lock_concurrency_key
-- Serialize capped enqueues of one key until the transaction ends: the count that follows
-- (a fresh snapshot, taken after the lock) sees every earlier one committed.
select pg_advisory_xact_lock(hashtextextended('forgeline.queued:' || %(concurrency_key)s, 0))

-- name: count_queued
select count(*) as n from tasks where status = 'queued' and concurrency_key = %(concurrency_key)s

-- name: get_task_by_idempotency_key
select * from tasks where idempotency_key = %(idempotency_key)s

-- name: claim
-- Lease up to %(limit)s eligible tasks in one statement: queued, due, of an accepted kind,
-- and either without concurrency key or the oldest queued task of a key that has no
-- running task. SKIP LOCKED lets concurrent claimers pass over each other's rows instead
-- of queueing behind them; the unique index tasks_key_running_idx backs the key rule.
with candidates as (
    select t.id from tasks t
    where t.status = 'queued' and t.run_after <= now()
      and (%(kinds)s::text[] is null or t.kind = any(%(kinds)s::text[]))
      and (t.concurrency_key is null or (
          not exists (select 1 from tasks r
                      where r.status = 'running' and r.concurrency_key = t.concurrency_key)
          and not exists (select 1 from tasks e
                          where e.status = 'queued' and e.concurrency_key = t.concurrency_key
                            and e.seq < t.seq)))
    order by t.priority desc, t.seq
    limit %(limit)s
    for update of t skip locked
)
update tasks
set status = 'running', worker = %(worker)s, lease_token = tasks.lease_token + 1,
    attempts = tasks.attempts + 1,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s),
    started_at = coalesce(tasks.started_at, now()), updated_at = now()
from candidates
where tasks.id = candidates.id
returning tasks.*

-- name: heartbeat
update tasks set lease_expires_at = now() + make_interval(secs => %(lease_s)s), updated_at = now()
where id = %(id)s and lease_token = %(token)s and status = 'running'
returning *

-- name: complete
update tasks
set status = 'completed', result = %(result)s::jsonb, finished_at = now(), updated_at = now(),
    lease_expires_at = null
where id = %(id)s and lease_token = %(token)s and status = 'running'
returning *

-- name: complete_many
-- Complete several leased tasks in one statement and one commit (see _CompletionBatcher);
-- rows whose lease is no longer current are left alone and missing from the answer.
update tasks t
set status = 'completed', result = v.result::jsonb, finished_at = now(), updated_at = now(),
    lease_expires_at = null
from unnest(%(ids)s::text[], %(tokens)s::bigint[], %(results)s::text[]) as v(id, token, result)
where t.id = v.id and t.lease_token = v.token and t.status = 'running'
returning t.*

-- name: finish_cancelled
update tasks
set status = 'cancelled', result = %(result)s::jsonb, finished_at = now(), updated_at = now(),
    lease_expires_at = null
where id = %(id)s and lease_token = %(token)s and status = 'running'
returning *

-- name: fail
-- A failed attempt: back to the queue after %(delay_s)s while attempts remain, the failure
-- is retryable and nobody asked to cancel; otherwise failed for good.
update tasks
set status = case when %(retryable)s and attempts < max_attempts and not cancel_requested
                  then 'queued' else 'failed' end,
    run_after = case when %(retryable)s and attempts < max_attempts and not cancel_requested
                     then now() + make_interval(secs => %(delay_s)s) else run_after end,
    finished_at = case when %(retryable)s and attempts < max_attempts and not cancel_requested
                       then null else now() end,
    worker = case when %(retryable)s and attempts < max_attempts and not cancel_requested
                  then null else worker end,
    last_error = %(error)s, result = coalesce(%(result)s::jsonb, result),
    lease_expires_at = null, updated_at = now()
where id = %(id)s and lease_token = %(token)s and status = 'running'
returning *

-- name: release
-- Give the task back without counting the attempt; a task whose cancel was requested ends
-- cancelled instead (no worker will run it again).
update tasks
set status = case when cancel_requested then 'cancelled' else 'queued' end,
    finished_at = case when cancel_requested then now() else null end,
    attempts = attempts - 1, worker = null, lease_expires_at = null, updated_at = now()
where id = %(id)s and lease_token = %(token)s and status = 'running'
returning *

-- name: cancel_queued
update tasks set status = 'cancelled', cancel_requested = true, finished_at = now(),
                 updated_at = now()
where id = %(id)s and status = 'queued'
returning *

-- name: cancel_running
-- Ask the worker to stop: the notification reaches its wait_for_cancel at once.
with marked as (
    update tasks set cancel_requested = true, updated_at = now()
    where id = %(id)s and status = 'running'
    returning *
)
select marked.*, pg_notify('forgeline_cancel', marked.id) is null as notified from marked

-- name: recover_expired
-- Leases that ran out: the attempt counts. Cancel requested → cancelled; attempts used up
-- → failed; otherwise queued again at once. SKIP LOCKED: a worker finishing its task right
-- now keeps it.
with expired as (
    select id from tasks
    where status = 'running' and lease_expires_at < now()
    for update skip locked
)
update tasks
set status = case when cancel_requested then 'cancelled'
                  when attempts >= max_attempts then 'failed'
                  else 'queued' end,
    finished_at = case when cancel_requested or attempts >= max_attempts then now()
                       else null end,
    worker = case when cancel_requested or attempts >= max_attempts then worker else null end,
    last_error = 'lease expired (worker ' || coalesce(worker, '?') || ' lost)',
    lease_expires_at = null, updated_at = now()
from expired
where tasks.id = expired.id
returning tasks.id

-- name: notify_work
select pg_notify('forgeline_work', '')

-- name: has_work
select exists (select 1 from tasks where status = 'queued' and run_after <= now())

-- name: cancel_state
select cancel_requested from tasks where id = %(id)s
