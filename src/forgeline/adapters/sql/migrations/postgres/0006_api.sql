-- What the HTTP API's operations keep: builder tokens limited to named projects (a JSON
-- array; null: every project), a project's default agent provider and model, and the
-- agent session of each project's newest completed build per provider, which a build
-- asking to "continue" resumes.
alter table api_tokens add column projects jsonb;
alter table projects add column default_provider text;
alter table projects add column default_model text;

create table agent_sessions (
    project     text not null,
    provider    text not null,
    session_id  text not null,
    task_id     text not null,
    recorded_at timestamptz not null default now(),
    primary key (project, provider)
);
