-- Queries of the store on PostgreSQL. Times come from the database clock (now()); JSON
-- columns are jsonb. A write may run twice (the executor repeats it when the connection
-- breaks), which each query here tolerates: see the store.

-- name: insert_project
-- A clash on the name inserts nothing: the store reports the project as existing (a
-- repeat of an insert that committed too, which ProjectService resumes from).
insert into projects (name, repo_url, default_branch, template, variables, credentials,
                      settings, state, default_provider, default_model)
values (%(name)s, %(repo_url)s, %(default_branch)s, %(template)s, %(variables)s,
        %(credentials)s, %(settings)s, %(state)s, %(default_provider)s, %(default_model)s)
on conflict (name) do nothing

-- name: get_project
select name, repo_url, default_branch, template, variables, credentials, settings, state,
       created_at, updated_at, default_provider, default_model
from projects where name = %(name)s

-- name: list_projects
-- By name, after %(after)s, at most %(limit)s (null: all), only %(names)s (a jsonb array)
-- if given.
select name, repo_url, default_branch, template, variables, credentials, settings, state,
       created_at, updated_at, default_provider, default_model
from projects
where (%(after)s::text is null or name > %(after)s)
  and (%(names)s::jsonb is null
       or name in (select jsonb_array_elements_text(%(names)s::jsonb)))
order by name limit %(limit)s

-- name: update_project
update projects set repo_url = %(repo_url)s, default_branch = %(default_branch)s,
    template = %(template)s, variables = %(variables)s, credentials = %(credentials)s,
    settings = %(settings)s, state = %(state)s, default_provider = %(default_provider)s,
    default_model = %(default_model)s, updated_at = now()
where name = %(name)s
returning name

-- name: delete_project_sessions
delete from agent_sessions where project = %(name)s

-- name: delete_project
delete from projects where name = %(name)s returning name

-- name: record_session
insert into agent_sessions (project, provider, session_id, task_id)
values (%(project)s, %(provider)s, %(session_id)s, %(task_id)s)
on conflict (project, provider) do update set session_id = excluded.session_id,
    task_id = excluded.task_id, recorded_at = now()

-- name: last_session
select session_id from agent_sessions where project = %(project)s and provider = %(provider)s

-- name: lock_task_events
-- Serializes the task's writers until the transaction ends, so the newest event read next
-- (a separate statement: under READ COMMITTED each one gets a fresh snapshot, taken after
-- the lock is held) stays the newest until the insert.
select pg_advisory_xact_lock(hashtextextended(%(task_id)s, 0))

-- name: newest_event
select seq, type, body from task_events where task_id = %(task_id)s
order by seq desc limit 1

-- name: insert_event
-- Notifies watchers in other processes, delivered when the transaction commits.
insert into task_events (task_id, seq, type, body)
values (%(task_id)s, %(seq)s, %(type)s, %(body)s)
returning pg_notify(%(channel)s, %(notification)s)

-- name: list_events
select seq, type, body from task_events where task_id = %(task_id)s and seq > %(after_seq)s
order by seq limit %(limit)s

-- name: insert_token
-- A repeat of an insert that committed finds its own id and inserts nothing.
insert into api_tokens (id, name, token_hash, role, projects)
values (%(id)s, %(name)s, %(token_hash)s, %(role)s, %(projects)s)
on conflict (id) do nothing

-- name: get_token
select id, name, role, created_at, last_used_at, projects from api_tokens where id = %(id)s

-- name: use_token
update api_tokens set last_used_at = now() where token_hash = %(token_hash)s
returning id, name, role, created_at, last_used_at, projects

-- name: list_tokens
select id, name, role, created_at, last_used_at, projects from api_tokens
order by created_at, id

-- name: delete_token
delete from api_tokens where id = %(id)s returning id

-- name: count_tokens
select count(*) as count from api_tokens
