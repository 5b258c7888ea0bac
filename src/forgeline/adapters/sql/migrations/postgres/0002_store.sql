-- Projects, the event log of each task, and API tokens.
create table projects (
    name           text primary key,
    repo_url       text not null,
    default_branch text not null default 'main',
    template       text,
    variables      jsonb not null default '{}',
    credentials    jsonb not null default '{}',
    settings       jsonb not null default '{}',
    state          text not null default 'ready',
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);

-- One row per normalized event; (task_id, seq) is dense from 1. body is the public JSON
-- shape, stored as text so replays send it byte for byte without re-serializing.
create table task_events (
    task_id text    not null,
    seq     integer not null,
    type    text    not null,
    body    text    not null,
    primary key (task_id, seq)
);

create table api_tokens (
    id           text primary key,
    name         text not null,
    token_hash   text not null unique,
    role         text not null default 'admin',
    created_at   timestamptz not null default now(),
    last_used_at timestamptz
);
