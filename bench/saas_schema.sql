-- The benchmark's source schema: one customer's database of a realistic SaaS
-- product. A foreign-key tree (organizations → users → projects → tasks →
-- comments, attachments; events), a self-reference (users.manager_id), jsonb,
-- bytea, numeric, arrays, timestamptz and NULLs.

CREATE TABLE organizations (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    plan        text NOT NULL,
    settings    jsonb NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE users (
    id          bigint PRIMARY KEY,
    org_id      bigint NOT NULL REFERENCES organizations (id),
    manager_id  bigint REFERENCES users (id),
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    profile     jsonb,
    created_at  timestamptz NOT NULL
);

CREATE TABLE projects (
    id          bigint PRIMARY KEY,
    org_id      bigint NOT NULL REFERENCES organizations (id),
    owner_id    bigint REFERENCES users (id),
    name        text NOT NULL,
    budget      numeric(12, 2),
    tags        text[] NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE tasks (
    id          bigint PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id),
    assignee_id bigint REFERENCES users (id),
    title       text NOT NULL,
    status      text NOT NULL,
    estimate    numeric,
    due_at      timestamptz,
    created_at  timestamptz NOT NULL
);

CREATE TABLE comments (
    id          bigint PRIMARY KEY,
    task_id     bigint NOT NULL REFERENCES tasks (id),
    author_id   bigint NOT NULL REFERENCES users (id),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE events (
    id          bigint PRIMARY KEY,
    org_id      bigint NOT NULL REFERENCES organizations (id),
    user_id     bigint REFERENCES users (id),
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    occurred_at timestamptz NOT NULL
);

CREATE TABLE attachments (
    id          bigint PRIMARY KEY,
    task_id     bigint NOT NULL REFERENCES tasks (id),
    filename    text NOT NULL,
    size_bytes  integer NOT NULL,
    content     bytea
);
