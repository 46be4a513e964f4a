-- helpr vault: wake-ups for live mail events (PostgreSQL). Keep in step with ../sqlite/0012_mail_event_notify.sql.
--
-- Every transaction that records live events bumps its tenant's counter row once, as its
-- last statement (migration 0010). A trigger on that row sends a notification on channel
-- helpr_mail_events with the tenant id as payload; PostgreSQL delivers it when the
-- transaction commits (never if it rolls back), so a process that LISTENs reads the new
-- events at once instead of polling for them. The payload is an id, never content.
CREATE FUNCTION helpr_notify_mail_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('helpr_mail_events', NEW.tenant_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER mail_event_counters_notify
    AFTER INSERT OR UPDATE ON mail_event_counters
    FOR EACH ROW EXECUTE FUNCTION helpr_notify_mail_events();
