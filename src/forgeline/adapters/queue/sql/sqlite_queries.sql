-- Queries of the SQLite queue adapter. Every write runs inside BEGIN IMMEDIATE (one writer
-- at a time across processes), so a select-then-update here is race-free. Times are
-- fixed-width UTC text passed in by the adapter (:now).

-- name: insert_task
-- Insert one task; a clash on id (a retried insert) or idempotency key inserts nothing.
insert into tasks (id, kind, payload, status, priority, attempts, max_attempts, created_at,
                   updated_at, run_after, concurrency_key, idempotency_key, request_hash)
values (:id, :kind, :payload, 'queued', :priority, 0, :max_attempts, :now, :now,
        :run_after, :concurrency_key, :idempotency_key, :request_hash)
on conflict do nothing

-- name: get_task
select * from tasks where id = :id

-- name: count_queued
select count(*) from tasks where status = 'queued' and concurrency_key = :concurrency_key

-- name: get_task_by_idempotency_key
select * from tasks where idempotency_key = :idempotency_key

-- name: claim
-- Lease up to :limit eligible tasks: queued, due, of an accepted kind, and either without
-- concurrency key or the oldest queued task of a key that has no running task.
update tasks
set status = 'running', worker = :worker, lease_token = lease_token + 1,
    attempts = attempts + 1, lease_expires_at = :expires_at,
    started_at = coalesce(started_at, :now), updated_at = :now
where seq in (
    select t.seq from tasks t
    where t.status = 'queued' and t.run_after <= :now
      and (:kinds is null or t.kind in (select value from json_each(:kinds)))
      and (t.concurrency_key is null or (
          not exists (select 1 from tasks r
                      where r.status = 'running' and r.concurrency_key = t.concurrency_key)
          and not exists (select 1 from tasks e
                          where e.status = 'queued' and e.concurrency_key = t.concurrency_key
                            and e.seq < t.seq)))
    order by t.priority desc, t.seq
    limit :limit)
returning *

-- name: heartbeat
update tasks set lease_expires_at = :expires_at, updated_at = :now
where id = :id and lease_token = :token and status = 'running'
returning *

-- name: complete
update tasks
set status = 'completed', result = :result, finished_at = :now, updated_at = :now,
    lease_expires_at = null
where id = :id and lease_token = :token and status = 'running'
returning *

-- name: finish_cancelled
update tasks
set status = 'cancelled', result = :result, finished_at = :now, updated_at = :now,
    lease_expires_at = null
where id = :id and lease_token = :token and status = 'running'
returning *

-- name: fail
-- A failed attempt: back to the queue at :run_after while attempts remain, the failure is
-- retryable and nobody asked to cancel; otherwise failed for good.
update tasks
set status = case when :retryable and attempts < max_attempts and not cancel_requested
                  then 'queued' else 'failed' end,
    run_after = case when :retryable and attempts < max_attempts and not cancel_requested
                     then :run_after else run_after end,
    finished_at = case when :retryable and attempts < max_attempts and not cancel_requested
                       then null else :now end,
    worker = case when :retryable and attempts < max_attempts and not cancel_requested
                  then null else worker end,
    last_error = :error, result = coalesce(:result, result), lease_expires_at = null,
    updated_at = :now
where id = :id and lease_token = :token and status = 'running'
returning *

-- name: release
-- Give the task back without counting the attempt; a task whose cancel was requested
-- ends cancelled instead (no worker will run it again).
update tasks
set status = case when cancel_requested then 'cancelled' else 'queued' end,
    finished_at = case when cancel_requested then :now else null end,
    attempts = attempts - 1, worker = null, lease_expires_at = null, updated_at = :now
where id = :id and lease_token = :token and status = 'running'
returning *

-- name: cancel_queued
update tasks set status = 'cancelled', cancel_requested = 1, finished_at = :now, updated_at = :now
where id = :id and status = 'queued'
returning *

-- name: cancel_running
update tasks set cancel_requested = 1, updated_at = :now
where id = :id and status = 'running'
returning *

-- name: recover_expired
-- Leases that ran out: the attempt counts. Cancel requested → cancelled; attempts used up
-- → failed; otherwise queued again at once.
update tasks
set status = case when cancel_requested then 'cancelled'
                  when attempts >= max_attempts then 'failed'
                  else 'queued' end,
    finished_at = case when cancel_requested or attempts >= max_attempts then :now
                       else null end,
    worker = case when cancel_requested or attempts >= max_attempts then worker else null end,
    last_error = 'lease expired (worker ' || coalesce(worker, '?') || ' lost)',
    lease_expires_at = null, updated_at = :now
where status = 'running' and lease_expires_at < :now
returning id

-- name: has_work
select exists (select 1 from tasks where status = 'queued' and run_after <= :now)

-- name: cancel_state
select status, cancel_requested from tasks where id = :id
