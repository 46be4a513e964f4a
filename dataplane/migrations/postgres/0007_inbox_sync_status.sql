-- helpr vault: inbox sync status (PostgreSQL). Keep in step with ../sqlite/0007_inbox_sync_status.sql.
--
-- What the control API's GetInboxStatus answers besides inboxes.status:
--
--   last_synced_at_ms    when a sync worker last committed progress for the inbox (written
--                        in the transaction that advances its history high-water mark);
--                        NULL: never synced (the Inbox's Connected condition is Pending)
--   watch_expires_at_ms  when the inbox's Gmail push watch (users.watch) expires, as Gmail
--                        answered it; NULL: no watch registered
ALTER TABLE inboxes ADD COLUMN last_synced_at_ms BIGINT;
ALTER TABLE inboxes ADD COLUMN watch_expires_at_ms BIGINT;
