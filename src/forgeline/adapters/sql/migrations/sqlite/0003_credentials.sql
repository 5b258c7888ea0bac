-- Credential store (issue 6). Values are AES-256-GCM envelopes; see
-- forgeline/adapters/credentials/crypto.py. project = '' means the global scope (NULL
-- would make the unique constraint useless: NULLs never collide).
create table credentials (
    id integer primary key autoincrement,
    name text not null,
    project text not null default '',
    key_id text not null,
    wrapped_key blob not null,
    ciphertext blob not null,
    created_at text not null,
    updated_at text not null,
    last_used_at text,
    unique (name, project)
);

create index credentials_key_id on credentials (key_id);

-- Which master key new ciphertexts use. One row; a rotation switches it first, so every
-- writer in every process moves to the new key before the re-encryption pass starts.
create table credential_keyring (
    id integer primary key check (id = 1),
    current_key_id text not null,
    updated_at text not null
);

-- Audit trail: which task received which credential, when. No foreign keys: it outlives
-- deleted credentials, and tasks belong to another part of the schema.
create table credential_uses (
    id integer primary key autoincrement,
    name text not null,
    project text not null default '',
    task_id text not null,
    used_at text not null
);

create index credential_uses_task on credential_uses (task_id);
create index credential_uses_name on credential_uses (name, used_at);
