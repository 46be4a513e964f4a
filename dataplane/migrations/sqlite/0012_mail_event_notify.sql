-- helpr vault: wake-ups for live mail events (SQLite). Keep in step with ../postgres/0012_mail_event_notify.sql.
--
-- SQLite cannot tell other processes of a commit, so live-event readers poll; nothing to
-- change here. The migration exists so both databases count the same migrations.
SELECT 1;
