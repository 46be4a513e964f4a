-- helpr vault: initial schema (SQLite). Keep in step with ../postgres/0001_initial.sql.
--
-- Plaintext columns hold only ids, Gmail ids, timestamps (Unix epoch milliseconds), sizes,
-- counts, flags, status words and configuration (a tenant's display name, an inbox's
-- address). Every column holding message content is a sealed value (BLOB, stored format
-- 0x01: format byte, u32be DEK version, 12-byte nonce, ciphertext and tag).
-- Unsigned 64-bit values are stored as INTEGER; the code refuses values above i64::MAX.

CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

-- Versions of each tenant's DEK, wrapped by the KMS. Never a plaintext key.
CREATE TABLE tenant_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    version       INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    wrapped_dek   TEXT NOT NULL,
    kms_key_ref   TEXT NOT NULL,
    seal_count    INTEGER NOT NULL DEFAULT 0 CHECK (seal_count >= 0),
    retired       INTEGER NOT NULL DEFAULT 0 CHECK (retired IN (0, 1)),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, version)
) STRICT;

CREATE TABLE inboxes (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    address         TEXT NOT NULL,
    history_id      INTEGER CHECK (history_id >= 0),
    status          TEXT NOT NULL DEFAULT 'connected'
                    CHECK (status IN ('connected', 'needs_reconnect', 'disconnected')),
    -- Sealed Google refresh token (field inbox.refresh_token, record = inbox id).
    refresh_token   BLOB,
    connected_at_ms INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    UNIQUE (tenant_id, address),
    -- Target of the (tenant_id, inbox_id) foreign keys below: a row can only point at an
    -- inbox of its own tenant.
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE conversations (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    inbox_id           TEXT NOT NULL,
    gmail_thread_id    TEXT NOT NULL,
    last_message_at_ms INTEGER NOT NULL,
    message_count      INTEGER NOT NULL CHECK (message_count >= 0),
    UNIQUE (inbox_id, gmail_thread_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
) STRICT;

CREATE INDEX conversations_by_recency ON conversations (tenant_id, inbox_id, last_message_at_ms);

CREATE TABLE messages (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    inbox_id         TEXT NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    gmail_message_id TEXT NOT NULL,
    gmail_thread_id  TEXT NOT NULL,
    gmail_history_id INTEGER CHECK (gmail_history_id >= 0),
    internal_date_ms INTEGER NOT NULL,
    size_bytes       INTEGER NOT NULL CHECK (size_bytes >= 0),
    has_attachments  INTEGER NOT NULL CHECK (has_attachments IN (0, 1)),
    -- Sealed fields (record = message id).
    subject          BLOB NOT NULL,
    from_addr        BLOB NOT NULL,
    to_addrs         BLOB NOT NULL,
    cc_addrs         BLOB NOT NULL,
    reply_to         BLOB NOT NULL,
    text_body        BLOB NOT NULL,
    html_body        BLOB NOT NULL,
    snippet          BLOB NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    UNIQUE (inbox_id, gmail_message_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
) STRICT;

CREATE INDEX messages_by_date ON messages (tenant_id, inbox_id, internal_date_ms);
CREATE INDEX messages_by_conversation ON messages (conversation_id);

CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    ordinal      INTEGER NOT NULL CHECK (ordinal BETWEEN 0 AND 4294967295),
    -- Sealed fields (record = attachment id).
    name         BLOB NOT NULL,
    content_type BLOB NOT NULL,
    content_id   BLOB NOT NULL,
    data         BLOB NOT NULL,
    size_bytes   INTEGER NOT NULL CHECK (size_bytes >= 0),
    is_inline    INTEGER NOT NULL CHECK (is_inline IN (0, 1)),
    UNIQUE (message_id, ordinal)
) STRICT;

-- Work queue fed by Gmail push notifications. On PostgreSQL workers claim with
-- FOR UPDATE SKIP LOCKED; on SQLite (one writer at a time) they claim with
--   UPDATE ... WHERE state = 'pending' AND available_at_ms <= $now
-- inside a BEGIN IMMEDIATE transaction, and reclaim 'running' jobs whose claimed_at_ms
-- is too old.
CREATE TABLE sync_jobs (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    inbox_id          TEXT NOT NULL,
    -- Pub/Sub delivers at least once: a redelivered notification maps to the same job.
    pubsub_message_id TEXT,
    history_id        INTEGER NOT NULL CHECK (history_id >= 0),
    state             TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    available_at_ms   INTEGER NOT NULL,
    claimed_at_ms     INTEGER,
    created_at_ms     INTEGER NOT NULL,
    -- A short error kind (e.g. `gmail_unavailable`), never a message or content.
    last_error_kind   TEXT,
    UNIQUE (inbox_id, pubsub_message_id),
    FOREIGN KEY (tenant_id, inbox_id) REFERENCES inboxes (tenant_id, id)
) STRICT;

CREATE INDEX sync_jobs_claimable ON sync_jobs (available_at_ms) WHERE state = 'pending';
CREATE INDEX sync_jobs_running ON sync_jobs (claimed_at_ms) WHERE state = 'running';
CREATE INDEX sync_jobs_by_inbox ON sync_jobs (tenant_id, inbox_id, state);

-- Append-only audit trail: ids and verbs, never content. No foreign key, so that the trail
-- outlives what it refers to.
CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id   TEXT NOT NULL
) STRICT;

CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, id);
