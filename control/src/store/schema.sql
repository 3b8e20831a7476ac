-- Dockhand control endpoint: schema version 1.
-- One text, run on SQLite and on PostgreSQL: plain types (TEXT, BIGINT),
-- no autoincrement (ids are made by the application), JSON kept as TEXT.
-- Each table has the columns that are filtered or joined on, and a body
-- with the whole record.

CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS task_definitions (
    family TEXT NOT NULL,
    revision BIGINT NOT NULL,
    status TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (family, revision)
);

CREATE TABLE IF NOT EXISTS services (
    cluster TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (cluster, name)
);

CREATE TABLE IF NOT EXISTS service_events (
    cluster TEXT NOT NULL,
    service TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (cluster, service, id)
);

CREATE TABLE IF NOT EXISTS container_instances (
    arn TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    ec2_instance_id TEXT NOT NULL,
    status TEXT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    desired_seq BIGINT NOT NULL,
    report_seq BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS container_instances_cluster ON container_instances (cluster, status);
CREATE INDEX IF NOT EXISTS container_instances_ec2 ON container_instances (cluster, ec2_instance_id);

CREATE TABLE IF NOT EXISTS tasks (
    arn TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    container_instance TEXT NOT NULL,
    service TEXT NOT NULL,
    deployment TEXT NOT NULL,
    family TEXT NOT NULL,
    started_by TEXT NOT NULL,
    desired_status TEXT NOT NULL,
    last_status TEXT NOT NULL,
    live BIGINT NOT NULL,
    stopped_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_live ON tasks (cluster, live);
CREATE INDEX IF NOT EXISTS tasks_instance ON tasks (container_instance, live);
CREATE INDEX IF NOT EXISTS tasks_service ON tasks (cluster, service);

-- RunTask's clientToken: the request it came with and the answer given,
-- so that a retry (botocore sends the same token again) gets the same
-- tasks instead of new ones. Added without a version change: an older
-- dockhand leaves the table alone.
CREATE TABLE IF NOT EXISTS client_tokens (
    cluster TEXT NOT NULL,
    token TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (cluster, token)
);

CREATE TABLE IF NOT EXISTS tags (
    resource TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource, key)
);

-- Leases between replicas (PostgreSQL): who runs the scheduler, until when
-- (database time, unix milliseconds), and a fencing token that grows with
-- each new holder.
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
