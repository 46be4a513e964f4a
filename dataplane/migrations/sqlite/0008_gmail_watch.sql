-- helpr vault: Gmail push watches (SQLite). Keep in step with ../postgres/0008_gmail_watch.sql.
--
-- inbox_settings.pubsub_topic  the Pub/Sub topic the Inbox object names (spec.pubSub.topic),
--                              as projects/P/topics/T; NULL: no push, polling only
-- inbox_settings.push_audience  the audience of the Pub/Sub push subscription the Inbox
--                              object names (spec.pubSub.pushAudience); a push whose token
--                              carries another audience does not reach the inbox. NULL: any
--                              audience the ingest endpoint accepts
-- inboxes.watch_topic          the topic of the watch last registered with Gmail (users.watch);
--                              NULL: none. The sync worker registers again when it differs
--                              from the desired topic, and stops the watch when none is desired
-- inboxes.watch_error          why the last registration failed, one word (never Gmail's text):
--                              forbidden, not_found, rejected, unavailable; NULL: it succeeded
-- (inboxes.watch_expires_at_ms, from 0007, holds the expiration Gmail answered.)
ALTER TABLE inbox_settings ADD COLUMN pubsub_topic TEXT;
ALTER TABLE inbox_settings ADD COLUMN push_audience TEXT;
ALTER TABLE inboxes ADD COLUMN watch_topic TEXT;
ALTER TABLE inboxes ADD COLUMN watch_error TEXT;
