-- helpr vault: live mail events (SQLite). Keep in step with ../postgres/0010_mail_events.sql.
--
-- One row per change an agent's client may want to hear of at once, written in the
-- transaction of the change: ids and the kind only, never content. The agent API's
-- /v1/events tails a tenant's events by seq and checks each against the agent's access
-- when it delivers it. Rows are pruned after an hour; a client that was away longer
-- reloads. Deleting a message or conversation for good (purge, hard delete) deletes its
-- events.
--
-- Sequence numbers are per tenant and have no gaps: the last statement of a transaction
-- that records events bumps the tenant's counter row, whose lock it holds until it
-- commits, so a tenant's events commit in sequence order and a reader that has seen seq n
-- will never see a smaller one appear later.
--
-- kind: message.stored, message.deleted, message.restored, conversation.deleted,
--       conversation.restored
CREATE TABLE mail_event_counters (
    tenant_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL
) STRICT;

CREATE TABLE mail_events (
    tenant_id       TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    inbox_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    message_id      TEXT,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) STRICT;
CREATE INDEX mail_events_by_time ON mail_events (at_ms);
CREATE INDEX mail_events_by_message ON mail_events (message_id);
CREATE INDEX mail_events_by_conversation ON mail_events (conversation_id);
