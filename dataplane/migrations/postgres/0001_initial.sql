-- helpr vault: initial schema (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql.
--
-- Plaintext columns hold only ids, Gmail ids, timestamps (Unix epoch milliseconds), sizes,
-- counts, flags, status words and configuration (a tenant's display name, an inbox's
-- address). Every column holding message content is a sealed value (BYTEA, stored format
-- 0x01: format byte, u32be DEK version, 12-byte nonce, ciphertext and tag).
-- Unsigned 64-bit values are stored as BIGINT; the code refuses values above i64::MAX.

CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Versions of each tenant's DEK, wrapped by the KMS. Never a plaintext key.
CREATE TABLE tenant_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    version       BIGINT NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    wrapped_dek   TEXT NOT NULL,
    kms_key_ref   TEXT NOT NULL,
    seal_count    BIGINT NOT NULL DEFAULT 0 CHECK (seal_count >= 0),
    retired       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

CREATE TABLE inboxes (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    address         TEXT NOT NULL,
    history_id      BIGINT CHECK (history_id >= 0),
    status          TEXT NOT NULL DEFAULT 'connected'
                    CHECK (status IN ('connected', 'needs_reconnect', 'disconnected')),
    -- Sealed Google refresh token (field inbox.refresh_token, record = inbox id).
    refresh_token   BYTEA,
    connected_at_ms BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    UNIQUE (tenant_id, address),
    -- Target of the (tenant_id, inbox_id) foreign keys below: a row can only point at an
    -- inbox of its own tenant.
    UNIQUE (tenant_id, id)
);

CREATE TABLE conversations (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    inbox_id           TEXT NOT NULL,
    gmail_thread_id    TEXT NOT NULL,
    last_message_at_ms BIGINT NOT NULL,
    message_count      BIGINT NOT NULL CHECK (message_count >= 0),
    UNIQUE (inbox_id, gmail_thread_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);

CREATE INDEX conversations_by_recency ON conversations (tenant_id, inbox_id, last_message_at_ms);

CREATE TABLE messages (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    inbox_id         TEXT NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    gmail_message_id TEXT NOT NULL,
    gmail_thread_id  TEXT NOT NULL,
    gmail_history_id BIGINT CHECK (gmail_history_id >= 0),
    internal_date_ms BIGINT NOT NULL,
    size_bytes       BIGINT NOT NULL CHECK (size_bytes >= 0),
    has_attachments  BOOLEAN NOT NULL,
    -- Sealed fields (record = message id).
    subject          BYTEA NOT NULL,
    from_addr        BYTEA NOT NULL,
    to_addrs         BYTEA NOT NULL,
    cc_addrs         BYTEA NOT NULL,
    reply_to         BYTEA NOT NULL,
    text_body        BYTEA NOT NULL,
    html_body        BYTEA NOT NULL,
    snippet          BYTEA NOT NULL,
    created_at_ms    BIGINT NOT NULL,
    UNIQUE (inbox_id, gmail_message_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);

CREATE INDEX messages_by_date ON messages (tenant_id, inbox_id, internal_date_ms);
CREATE INDEX messages_by_conversation ON messages (conversation_id);

CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    ordinal      BIGINT NOT NULL CHECK (ordinal BETWEEN 0 AND 4294967295),
    -- Sealed fields (record = attachment id).
    name         BYTEA NOT NULL,
    content_type BYTEA NOT NULL,
    content_id   BYTEA NOT NULL,
    data         BYTEA NOT NULL,
    size_bytes   BIGINT NOT NULL CHECK (size_bytes >= 0),
    is_inline    BOOLEAN NOT NULL,
    UNIQUE (message_id, ordinal)
);

-- Work queue fed by Gmail push notifications. Workers claim with
--   SELECT ... WHERE state = 'pending' AND available_at_ms <= $now
--   ORDER BY available_at_ms LIMIT $n FOR UPDATE SKIP LOCKED
-- and reclaim 'running' jobs whose claimed_at_ms is too old.
CREATE TABLE sync_jobs (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    inbox_id          TEXT NOT NULL,
    -- Pub/Sub delivers at least once: a redelivered notification maps to the same job.
    pubsub_message_id TEXT,
    history_id        BIGINT NOT NULL CHECK (history_id >= 0),
    state             TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts          BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    available_at_ms   BIGINT NOT NULL,
    claimed_at_ms     BIGINT,
    created_at_ms     BIGINT NOT NULL,
    -- A short error kind (e.g. `gmail_unavailable`), never a message or content.
    last_error_kind   TEXT,
    UNIQUE (inbox_id, pubsub_message_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
);

CREATE INDEX sync_jobs_claimable ON sync_jobs (available_at_ms) WHERE state = 'pending';
CREATE INDEX sync_jobs_running ON sync_jobs (claimed_at_ms) WHERE state = 'running';
CREATE INDEX sync_jobs_by_inbox ON sync_jobs (tenant_id, inbox_id, state);

-- Append-only audit trail: ids and verbs, never content. No foreign key, so that the trail
-- outlives what it refers to.
CREATE TABLE audit_events (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id   TEXT NOT NULL
);

CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, id);
