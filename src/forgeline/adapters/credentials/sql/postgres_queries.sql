-- Queries of the credential store on PostgreSQL. Each operation is one transaction, which
-- the executor repeats when the connection breaks: writes are upserts or compare-and-swaps,
-- safe to repeat. Writers read the current-key record FOR SHARE; a rotation updates it,
-- which waits for writers in flight and makes every later writer seal under the new key.
-- project = '' is the global scope.

-- name: current_key
select current_key_id from credential_keyring where id = 1 for share

-- name: adopt_key
-- First credential ever: adopt the writer's key (a clash leaves the one already chosen).
insert into credential_keyring (id, current_key_id, updated_at) values (1, %(key_id)s, %(now)s)
on conflict (id) do nothing

-- name: set_current_key
-- Conflicts with writers' FOR SHARE: waits for those in flight, then every later writer
-- sees the new key.
insert into credential_keyring (id, current_key_id, updated_at) values (1, %(key_id)s, %(now)s)
on conflict (id) do update set current_key_id = excluded.current_key_id,
    updated_at = excluded.updated_at

-- name: upsert
insert into credentials (name, project, key_id, wrapped_key, ciphertext, created_at,
                         updated_at)
values (%(name)s, %(project)s, %(key_id)s, %(wrapped_key)s, %(ciphertext)s, %(now)s, %(now)s)
on conflict (name, project) do update set key_id = excluded.key_id,
    wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,
    updated_at = excluded.updated_at
returning name, project, created_at, updated_at, last_used_at, key_id

-- name: lookup
-- The project's own row sorts before the global one ('' < any project name).
select id, name, project, key_id, wrapped_key, ciphertext from credentials
where name = %(name)s and project in (%(project)s, '') order by project desc limit 1

-- name: record_use
insert into credential_uses (name, project, task_id, used_at)
values (%(name)s, %(project)s, %(task_id)s, %(now)s)

-- name: touch
update credentials set last_used_at = %(now)s where id = %(id)s

-- name: list_all
select name, project, created_at, updated_at, last_used_at, key_id from credentials
order by name, project

-- name: list_for_project
-- The project's own credentials, and the global ones it does not shadow.
select name, project, created_at, updated_at, last_used_at, key_id from credentials c
where c.project = %(project)s or (c.project = '' and not exists (
    select 1 from credentials o where o.project = %(project)s and o.name = c.name))
order by name, project

-- name: delete
delete from credentials where name = %(name)s and project = %(project)s

-- name: uses
select name, project, task_id, used_at from credential_uses
where (%(name)s::text is null or name = %(name)s)
  and (%(task_id)s::text is null or task_id = %(task_id)s)
order by used_at desc, id desc limit %(limit)s

-- name: rows_not_under
select id, name, project, key_id, wrapped_key, ciphertext from credentials
where key_id <> %(key_id)s and id > %(after_id)s order by id limit %(limit)s

-- name: swap_sealed
-- Compare-and-swap on the old ciphertext: a concurrent put always wins.
update credentials
set key_id = %(key_id)s, wrapped_key = %(wrapped_key)s, ciphertext = %(ciphertext)s
where id = %(id)s and key_id = %(old_key_id)s and ciphertext = %(old_ciphertext)s

-- name: key_ids_in_use
select distinct key_id from credentials order by key_id

-- name: count_not_under
select count(*) as n from credentials where key_id <> %(key_id)s
