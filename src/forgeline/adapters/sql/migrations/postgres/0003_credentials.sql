-- Credential store (issue 6). Values are AES-256-GCM envelopes; see
-- forgeline/adapters/credentials/crypto.py. project = '' means the global scope (NULL
-- would make the unique constraint useless: NULLs never collide).
create table credentials (
    id bigint generated always as identity primary key,
    name text not null,
    project text not null default '',
    key_id text not null,
    wrapped_key bytea not null,
    ciphertext bytea not null,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    last_used_at timestamptz,
    unique (name, project)
);

create index credentials_key_id on credentials (key_id);

-- Which master key new ciphertexts use. One row; writers read it FOR SHARE and a rotation
-- updates it first, so once the rotation's switch commits no writer in any process can
-- still be sealing under the old key.
create table credential_keyring (
    id integer primary key check (id = 1),
    current_key_id text not null,
    updated_at timestamptz not null
);

-- Audit trail: which task received which credential, when. No foreign keys: it outlives
-- deleted credentials, and tasks belong to another part of the schema.
create table credential_uses (
    id bigint generated always as identity primary key,
    name text not null,
    project text not null default '',
    task_id text not null,
    used_at timestamptz not null
);

create index credential_uses_task on credential_uses (task_id);
create index credential_uses_name on credential_uses (name, used_at);
