-- helpr vault: lifecycle (SQLite). Keep in step with ../postgres/0006_lifecycle.sql.
--
-- Soft delete: a deleted message keeps its row (sealed fields untouched) but is invisible to
-- every read an agent can reach (get, list, search re-check) and leaves the search index at
-- once. After the tenant's grace period (retention_policies.grace_period_days, default 60) the
-- purge job removes the row, its attachments and an emptied conversation for good. Until
-- then it can be restored (and is indexed again from the sealed store).
--
--   deleted_at_ms   when it was soft-deleted (NULL: live); the grace period counts from here
--   deleted_by      who: `cli`, `operator`, `retention` or an agent id (never an address)
--   deleted_reason  why, one word: `user`, `retention` or `inbox_deleted`
--
-- A soft delete also sets index_pending, so that the indexer (the repair path) removes a
-- message from the index should the immediate index delete not have happened.
--
-- SQLite cannot add table constraints: the consistency check sits on the last column added
-- (a column CHECK may read the row's other columns there).
ALTER TABLE messages ADD COLUMN deleted_at_ms INTEGER;
ALTER TABLE messages ADD COLUMN deleted_by TEXT;
ALTER TABLE messages ADD COLUMN deleted_reason TEXT CHECK (
    (deleted_reason IS NULL OR deleted_reason IN ('user', 'retention', 'inbox_deleted'))
    AND ((deleted_at_ms IS NULL AND deleted_by IS NULL AND deleted_reason IS NULL)
         OR (deleted_at_ms IS NOT NULL AND deleted_by IS NOT NULL AND deleted_reason IS NOT NULL))
);

-- The purge scan: soft-deleted messages of a tenant by deletion time.
CREATE INDEX messages_soft_deleted ON messages (tenant_id, deleted_at_ms)
    WHERE deleted_at_ms IS NOT NULL;
-- Conversations of a soft-deleted message, and live messages of a conversation.
CREATE INDEX messages_by_conversation_state ON messages (conversation_id, deleted_at_ms);
-- The delete_after_days scan: a tenant's conversations by last activity.
CREATE INDEX conversations_by_tenant_recency ON conversations (tenant_id, last_message_at_ms);

-- An inbox whose Inbox resource was deleted: its mail is soft-deleted, and mail a sync
-- worker still stores into it afterwards arrives soft-deleted too. Applying the Inbox again
-- clears it (the old mail stays soft-deleted until restored or purged).
ALTER TABLE inboxes ADD COLUMN deleted_at_ms INTEGER;
ALTER TABLE inboxes ADD COLUMN deleted_by TEXT CHECK ((deleted_at_ms IS NULL) = (deleted_by IS NULL));
