-- Queries of the callback outbox on SQLite. Every write runs inside BEGIN IMMEDIATE: SQLite
-- admits one writer at a time, so one claimer's select-then-lease cannot interleave with
-- another's, even across processes sharing the file. Times are fixed-width UTC text from
-- the outbox's clock.

-- name: insert_delivery
-- A clash on the id (a repeat) or on the idempotency key inserts nothing and returns no row.
insert into callback_deliveries (id, task_id, event, url, body, idempotency_key, created_at,
                                 next_attempt_at)
values (:id, :task_id, :event, :url, :body, :idempotency_key, :now, :now)
on conflict do nothing
returning *

-- name: get_delivery_or_key
select * from callback_deliveries where id = :id or idempotency_key = :idempotency_key

-- name: get_delivery
select * from callback_deliveries where id = :id

-- name: claim
-- Lease up to :limit due deliveries whose lease (if any) ran out, oldest due first.
update callback_deliveries
set lease_owner = :owner, lease_token = lease_token + 1, lease_expires_at = :expires
where id in (
    select id from callback_deliveries
    where status = 'pending' and next_attempt_at <= :now
      and (lease_expires_at is null or lease_expires_at <= :now)
    order by next_attempt_at, id
    limit :limit)
returning *

-- name: record
-- The delivery's new state after an attempt; no row unless :token still holds the lease.
update callback_deliveries
set status = :status, attempts = attempts + 1,
    next_attempt_at = coalesce(:retry_at, next_attempt_at),
    last_status_code = :status_code, last_error = :error, finished_at = :finished,
    lease_owner = null, lease_expires_at = null
where id = :id and lease_token = :token and status = 'pending' and attempts = :attempts
returning *

-- name: insert_attempt
insert into callback_attempts (delivery_id, number, started_at, duration_ms, outcome,
                               status_code, error)
values (:id, :number, :started_at, :duration_ms, :outcome, :status_code, :error)

-- name: release
update callback_deliveries set lease_owner = null, lease_expires_at = null
where id = :id and lease_token = :token

-- name: attempts_of_delivery
select * from callback_attempts where delivery_id = :id order by number

-- name: deliveries_of_task
select * from callback_deliveries where task_id = :task_id order by created_at, id

-- name: attempts_of_task
select a.* from callback_attempts a join callback_deliveries d on d.id = a.delivery_id
where d.task_id = :task_id order by a.number

-- name: next_due
-- When a pending delivery next becomes claimable: when it is due and its lease (if any) ran out.
select min(max(next_attempt_at, coalesce(lease_expires_at, next_attempt_at))) as due
from callback_deliveries where status = 'pending'

-- name: count
select count(*) as n from callback_deliveries where status = :status
