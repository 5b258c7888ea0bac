-- Queries of the store on SQLite. Every write runs inside BEGIN IMMEDIATE (one writer at a
-- time across processes). Times are fixed-width UTC text passed in by the store (:now);
-- JSON columns hold compact text.

-- name: insert_project
-- A clash on the name inserts nothing: the store reports the project as existing.
insert into projects (name, repo_url, default_branch, template, variables, credentials,
                      settings, state, default_provider, default_model, created_at, updated_at)
values (:name, :repo_url, :default_branch, :template, :variables, :credentials, :settings,
        :state, :default_provider, :default_model, :now, :now)
on conflict (name) do nothing

-- name: get_project
select name, repo_url, default_branch, template, variables, credentials, settings, state,
       created_at, updated_at, default_provider, default_model
from projects where name = :name

-- name: list_projects
-- By name, after :after, at most :limit (null: all), only :names (a JSON array) if given.
select name, repo_url, default_branch, template, variables, credentials, settings, state,
       created_at, updated_at, default_provider, default_model
from projects
where (:after is null or name > :after)
  and (:names is null or name in (select value from json_each(:names)))
order by name limit coalesce(:limit, -1)

-- name: update_project
update projects set repo_url = :repo_url, default_branch = :default_branch,
    template = :template, variables = :variables, credentials = :credentials,
    settings = :settings, state = :state, default_provider = :default_provider,
    default_model = :default_model, updated_at = :now
where name = :name
returning name

-- name: delete_project_sessions
delete from agent_sessions where project = :name

-- name: delete_project
delete from projects where name = :name returning name

-- name: record_session
insert into agent_sessions (project, provider, session_id, task_id, recorded_at)
values (:project, :provider, :session_id, :task_id, :now)
on conflict (project, provider) do update set session_id = excluded.session_id,
    task_id = excluded.task_id, recorded_at = excluded.recorded_at

-- name: last_session
select session_id from agent_sessions where project = :project and provider = :provider

-- name: lock_task_events
-- Nothing to do: the write's BEGIN IMMEDIATE already excludes every other writer, so the
-- newest event read next stays the newest until the insert.
select 1

-- name: newest_event
select seq, type, body from task_events where task_id = :task_id order by seq desc limit 1

-- name: insert_event
insert into task_events (task_id, seq, type, body) values (:task_id, :seq, :type, :body)

-- name: list_events
select seq, type, body from task_events where task_id = :task_id and seq > :after_seq
order by seq limit :limit

-- name: insert_token
-- A clash on the id (never, for a fresh one) inserts nothing; the store reads the row back.
insert into api_tokens (id, name, token_hash, role, created_at, projects)
values (:id, :name, :token_hash, :role, :now, :projects)
on conflict (id) do nothing

-- name: get_token
select id, name, role, created_at, last_used_at, projects from api_tokens where id = :id

-- name: use_token
update api_tokens set last_used_at = :now where token_hash = :token_hash
returning id, name, role, created_at, last_used_at, projects

-- name: list_tokens
select id, name, role, created_at, last_used_at, projects from api_tokens
order by created_at, id

-- name: delete_token
delete from api_tokens where id = :id returning id

-- name: count_tokens
select count(*) as count from api_tokens
