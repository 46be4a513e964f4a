-- helpr vault: search (SQLite). Keep in step with ../postgres/0002_search.sql.

-- Versions of each tenant's search index key (blind tokens), wrapped by the KMS like a DEK.
-- The key that blinds terms is derived from the unwrapped value; neither is stored in the clear.
CREATE TABLE tenant_index_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    version       INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    wrapped_key   TEXT NOT NULL,
    kms_key_ref   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, version)
) STRICT;

-- Index outbox: a message is stored with index_pending = 1 in the same row (so in the same
-- transaction); the indexer clears it once the search tier has the message. A crash between
-- store and index leaves the marker set, and the next indexer run repairs it. Reindexing sets
-- it again for every message of a tenant.
ALTER TABLE messages ADD COLUMN index_pending INTEGER NOT NULL DEFAULT 1
    CHECK (index_pending IN (0, 1));
CREATE INDEX messages_index_pending ON messages (tenant_id, id) WHERE index_pending;
