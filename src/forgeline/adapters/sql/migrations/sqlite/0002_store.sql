-- Projects, the event log of each task, and API tokens.
create table projects (
    name           text primary key,
    repo_url       text not null,
    default_branch text not null default 'main',
    template       text,
    variables      text not null default '{}',
    credentials    text not null default '{}',
    settings       text not null default '{}',
    state          text not null default 'ready',
    created_at     text not null,
    updated_at     text not null
);

-- One row per normalized event; (task_id, seq) is dense from 1. body is the public JSON
-- shape, stored once so replays send it without re-serializing.
create table task_events (
    task_id text    not null,
    seq     integer not null,
    type    text    not null,
    body    text    not null,
    primary key (task_id, seq)
) without rowid;

create table api_tokens (
    id           text primary key,
    name         text not null,
    token_hash   text not null unique,
    role         text not null default 'admin',
    created_at   text not null,
    last_used_at text
);
