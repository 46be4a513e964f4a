-- helpr vault: live mail events (SQLite). Keep in step with ../postgres/0010_mail_events.sql.
--
-- One row per change an agent's client may want to hear of at once, written in the
-- transaction of the change: ids and the kind only, never content. The agent API's
-- /v1/events tails it by seq and checks every event against the agent's access when it
-- delivers it. Rows are pruned after an hour; a client that was away longer reloads.
-- Deleting a message or conversation for good (purge, hard delete) deletes its events.
--
-- kind: message.stored, message.deleted, message.restored, conversation.deleted,
--       conversation.restored
CREATE TABLE mail_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    inbox_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    message_id      TEXT,
    at_ms           INTEGER NOT NULL
) STRICT;
CREATE INDEX mail_events_by_tenant ON mail_events (tenant_id, seq);
CREATE INDEX mail_events_by_time ON mail_events (at_ms);
-- A message or conversation deleted for good takes its events with it.
CREATE INDEX mail_events_by_message ON mail_events (message_id);
CREATE INDEX mail_events_by_conversation ON mail_events (conversation_id);
