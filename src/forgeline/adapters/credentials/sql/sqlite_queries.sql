-- Queries of the credential store on SQLite. Every write runs in one BEGIN IMMEDIATE
-- transaction: SQLite serializes writers, which is what keeps the rotation's key switch
-- and concurrent writers in order. project = '' is the global scope; times are
-- fixed-width UTC text passed in by the store (:now).

-- name: current_key
select current_key_id from credential_keyring where id = 1

-- name: adopt_key
-- First credential ever: adopt the writer's key (a clash leaves the one already chosen).
insert into credential_keyring (id, current_key_id, updated_at) values (1, :key_id, :now)
on conflict (id) do nothing

-- name: set_current_key
insert into credential_keyring (id, current_key_id, updated_at) values (1, :key_id, :now)
on conflict (id) do update set current_key_id = excluded.current_key_id,
    updated_at = excluded.updated_at

-- name: upsert
insert into credentials (name, project, key_id, wrapped_key, ciphertext, created_at,
                         updated_at)
values (:name, :project, :key_id, :wrapped_key, :ciphertext, :now, :now)
on conflict (name, project) do update set key_id = excluded.key_id,
    wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,
    updated_at = excluded.updated_at
returning name, project, created_at, updated_at, last_used_at, key_id

-- name: lookup
-- The project's own row sorts before the global one ('' < any project name).
select id, name, project, key_id, wrapped_key, ciphertext from credentials
where name = :name and project in (:project, '') order by project desc limit 1

-- name: record_use
insert into credential_uses (name, project, task_id, used_at)
values (:name, :project, :task_id, :now)

-- name: touch
update credentials set last_used_at = :now where id = :id

-- name: list_all
select name, project, created_at, updated_at, last_used_at, key_id from credentials
order by name, project

-- name: list_for_project
-- The project's own credentials, and the global ones it does not shadow.
select name, project, created_at, updated_at, last_used_at, key_id from credentials c
where c.project = :project or (c.project = '' and not exists (
    select 1 from credentials o where o.project = :project and o.name = c.name))
order by name, project

-- name: delete
delete from credentials where name = :name and project = :project

-- name: uses
select name, project, task_id, used_at from credential_uses
where (:name is null or name = :name) and (:task_id is null or task_id = :task_id)
order by used_at desc, id desc limit :limit

-- name: rows_not_under
select id, name, project, key_id, wrapped_key, ciphertext from credentials
where key_id <> :key_id and id > :after_id order by id limit :limit

-- name: swap_sealed
-- Compare-and-swap on the old ciphertext: a concurrent put always wins.
update credentials set key_id = :key_id, wrapped_key = :wrapped_key, ciphertext = :ciphertext
where id = :id and key_id = :old_key_id and ciphertext = :old_ciphertext

-- name: key_ids_in_use
select distinct key_id from credentials order by key_id

-- name: count_not_under
select count(*) as n from credentials where key_id <> :key_id
