-- Queries of the callback outbox on PostgreSQL. Claims select due rows FOR UPDATE SKIP
-- LOCKED and lease them in the same statement: concurrent claimers skip each other's rows
-- instead of waiting on them. Times come from the outbox's clock (UTC), as on SQLite, so
-- one contract suite with one fake clock covers both.

-- name: insert_delivery
-- ON CONFLICT DO NOTHING makes concurrent enqueues with one key race-free (the loser reads
-- the winner's row), and a repeat finds its own row by id.
insert into callback_deliveries (id, task_id, event, url, body, idempotency_key, created_at,
                                 next_attempt_at)
values (%(id)s, %(task_id)s, %(event)s, %(url)s, %(body)s, %(idempotency_key)s, %(now)s,
        %(now)s)
on conflict do nothing
returning *

-- name: get_delivery_or_key
select * from callback_deliveries where id = %(id)s or idempotency_key = %(idempotency_key)s

-- name: get_delivery
select * from callback_deliveries where id = %(id)s

-- name: claim
-- Lease up to %(limit)s due deliveries whose lease (if any) ran out, oldest due first.
with due as (
    select id from callback_deliveries
    where status = 'pending' and next_attempt_at <= %(now)s
      and (lease_expires_at is null or lease_expires_at <= %(now)s)
    order by next_attempt_at, id
    limit %(limit)s
    for update skip locked
)
update callback_deliveries d
set lease_owner = %(owner)s, lease_token = d.lease_token + 1, lease_expires_at = %(expires)s
from due where d.id = due.id
returning d.*

-- name: record
-- The delivery's new state after an attempt; no row unless %(token)s still holds the lease.
update callback_deliveries
set status = %(status)s, attempts = attempts + 1,
    next_attempt_at = coalesce(%(retry_at)s, next_attempt_at),
    last_status_code = %(status_code)s, last_error = %(error)s, finished_at = %(finished)s,
    lease_owner = null, lease_expires_at = null
where id = %(id)s and lease_token = %(token)s and status = 'pending'
  and attempts = %(attempts)s
returning *

-- name: insert_attempt
insert into callback_attempts (delivery_id, number, started_at, duration_ms, outcome,
                               status_code, error)
values (%(id)s, %(number)s, %(started_at)s, %(duration_ms)s, %(outcome)s, %(status_code)s,
        %(error)s)

-- name: release
update callback_deliveries set lease_owner = null, lease_expires_at = null
where id = %(id)s and lease_token = %(token)s

-- name: attempts_of_delivery
select * from callback_attempts where delivery_id = %(id)s order by number

-- name: deliveries_of_task
select * from callback_deliveries where task_id = %(task_id)s order by created_at, id

-- name: attempts_of_task
select a.* from callback_attempts a join callback_deliveries d on d.id = a.delivery_id
where d.task_id = %(task_id)s order by a.number

-- name: next_due
-- When a pending delivery next becomes claimable (greatest() skips a null lease).
select min(greatest(next_attempt_at, lease_expires_at)) as due
from callback_deliveries where status = 'pending'

-- name: count
select count(*) as n from callback_deliveries where status = %(status)s
