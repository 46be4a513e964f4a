-- helpr vault: control API state (PostgreSQL). Keep in step with ../sqlite/0005_control.sql.
--
-- What the operator pushed over the control API. Configuration only: Kubernetes names,
-- uids, generations, settings. Inbox addresses stay in `inboxes`; no content anywhere.

-- One row per Kubernetes object ever applied: its uid, the last generation applied and
-- whether it was deleted. Every control change checks and updates its row in the same
-- transaction as the change (older generation: nothing written).
CREATE TABLE control_objects (
    kind          TEXT NOT NULL CHECK (kind IN ('tenant', 'inbox', 'grant', 'retention_policy')),
    namespace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    uid           TEXT NOT NULL,
    generation    BIGINT NOT NULL CHECK (generation >= 1),
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at_ms BIGINT,
    applied_at_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);

-- Settings of a tenant from its Tenant resource. state 'stopped': deleted with policy
-- retain (data kept, inboxes disconnected).
CREATE TABLE tenant_settings (
    tenant_id       TEXT PRIMARY KEY REFERENCES tenants (id),
    deletion_policy TEXT NOT NULL CHECK (deletion_policy IN ('retain', 'shred')),
    search_mode     TEXT NOT NULL CHECK (search_mode IN ('blind', 'plaintext')),
    state           TEXT NOT NULL CHECK (state IN ('active', 'stopped')),
    generation      BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL
);

-- An inbox managed by an Inbox resource: the Kubernetes name -> inbox id mapping and its
-- access settings.
CREATE TABLE inbox_settings (
    inbox_id                     TEXT PRIMARY KEY,
    tenant_id                    TEXT NOT NULL,
    namespace                    TEXT NOT NULL,
    name                         TEXT NOT NULL,
    visibility                   TEXT NOT NULL CHECK (visibility IN ('org', 'team', 'restricted')),
    team                         TEXT,
    assignment_limits_visibility BOOLEAN NOT NULL,
    generation                   BIGINT NOT NULL,
    updated_at_ms                BIGINT NOT NULL,
    UNIQUE (namespace, name),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);

-- Access grants (InboxGrant resources), keyed by the resource's namespace and name.
CREATE TABLE inbox_grants (
    namespace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    inbox_id      TEXT NOT NULL,
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('agent', 'team')),
    subject_name  TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('reply', 'configure')),
    expires_at_ms BIGINT,
    generation    BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, name),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);
CREATE INDEX inbox_grants_by_inbox ON inbox_grants (inbox_id);
CREATE INDEX inbox_grants_by_subject ON inbox_grants (tenant_id, subject_kind, subject_name);

-- Retention (RetentionPolicy resources): at most one per tenant.
CREATE TABLE retention_policies (
    namespace         TEXT NOT NULL,
    name              TEXT NOT NULL,
    tenant_id         TEXT NOT NULL UNIQUE REFERENCES tenants (id),
    grace_period_days BIGINT NOT NULL CHECK (grace_period_days >= 0),
    delete_after_days BIGINT CHECK (delete_after_days >= 1),
    legal_hold        BOOLEAN NOT NULL,
    generation        BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Change feed. Every control change increments the counter (the row lock orders writers,
-- so sequence numbers commit in order) and appends a row here in its transaction; readers
-- follow the log by sequence number. PostgreSQL also sends NOTIFY helpr_control <seq> in
-- the transaction, so listeners wake at commit; SQLite readers poll. Old rows are pruned.
CREATE TABLE control_change_counter (
    id  BIGINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO control_change_counter (id, seq) VALUES (1, 0);

CREATE TABLE control_changes (
    seq       BIGINT PRIMARY KEY,
    kind      TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    deleted   BOOLEAN NOT NULL,
    at_ms     BIGINT NOT NULL
);
