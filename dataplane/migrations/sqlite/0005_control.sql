-- helpr vault: control API state (SQLite). Keep in step with ../postgres/0005_control.sql.
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
    generation    INTEGER NOT NULL CHECK (generation >= 1),
    deleted       INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    deleted_at_ms INTEGER,
    applied_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) STRICT;

-- Settings of a tenant from its Tenant resource. state 'stopped': deleted with policy
-- retain (data kept, inboxes disconnected).
CREATE TABLE tenant_settings (
    tenant_id       TEXT PRIMARY KEY REFERENCES tenants (id),
    deletion_policy TEXT NOT NULL CHECK (deletion_policy IN ('retain', 'shred')),
    search_mode     TEXT NOT NULL CHECK (search_mode IN ('blind', 'plaintext')),
    state           TEXT NOT NULL CHECK (state IN ('active', 'stopped')),
    generation      INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
) STRICT;

-- An inbox managed by an Inbox resource: the Kubernetes name -> inbox id mapping and its
-- access settings.
CREATE TABLE inbox_settings (
    inbox_id                     TEXT PRIMARY KEY,
    tenant_id                    TEXT NOT NULL,
    namespace                    TEXT NOT NULL,
    name                         TEXT NOT NULL,
    visibility                   TEXT NOT NULL CHECK (visibility IN ('org', 'team', 'restricted')),
    team                         TEXT,
    assignment_limits_visibility INTEGER NOT NULL CHECK (assignment_limits_visibility IN (0, 1)),
    generation                   INTEGER NOT NULL,
    updated_at_ms                INTEGER NOT NULL,
    UNIQUE (namespace, name),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
) STRICT;

-- Access grants (InboxGrant resources), keyed by the resource's namespace and name.
CREATE TABLE inbox_grants (
    namespace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    inbox_id      TEXT NOT NULL,
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('agent', 'team')),
    subject_name  TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('reply', 'configure')),
    expires_at_ms INTEGER,
    generation    INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, name),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
) STRICT;
CREATE INDEX inbox_grants_by_inbox ON inbox_grants (inbox_id);
CREATE INDEX inbox_grants_by_subject ON inbox_grants (tenant_id, subject_kind, subject_name);

-- Retention (RetentionPolicy resources): at most one per tenant.
CREATE TABLE retention_policies (
    namespace         TEXT NOT NULL,
    name              TEXT NOT NULL,
    tenant_id         TEXT NOT NULL UNIQUE REFERENCES tenants (id),
    grace_period_days INTEGER NOT NULL CHECK (grace_period_days >= 0),
    delete_after_days INTEGER CHECK (delete_after_days >= 1),
    legal_hold        INTEGER NOT NULL CHECK (legal_hold IN (0, 1)),
    generation        INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) STRICT;

-- Change feed. Every control change increments the counter (the row lock orders writers,
-- so sequence numbers commit in order) and appends a row here in its transaction; readers
-- follow the log by sequence number. PostgreSQL also sends NOTIFY helpr_control <seq> in
-- the transaction, so listeners wake at commit; SQLite readers (one host) poll. Old rows are pruned.
CREATE TABLE control_change_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
) STRICT;
INSERT INTO control_change_counter (id, seq) VALUES (1, 0);

CREATE TABLE control_changes (
    seq       INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    deleted   INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    at_ms     INTEGER NOT NULL
) STRICT;
