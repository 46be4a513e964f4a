-- helpr vault: search tombstones (SQLite). Keep in step with ../postgres/0004_search_tombstones.sql.

-- A search backend that removes documents only eventually (Quickwit applies delete tasks to
-- mature splits, hours later) records here what has been deleted, so that every query can
-- exclude it at once. A tombstone hides the documents of its scope whose document version is
-- at most cutoff_version (documents indexed again after the delete stay visible). It is
-- removed once the backend reports its delete task (delete_opstamp, NULL until the task is
-- created) applied everywhere. Ids only: no content, no terms.
CREATE TABLE search_tombstones (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    scope_kind     TEXT NOT NULL
        CHECK (scope_kind IN ('message', 'conversation', 'inbox', 'tenant')),
    scope_id       TEXT NOT NULL,
    cutoff_version INTEGER NOT NULL CHECK (cutoff_version >= 0),
    delete_opstamp INTEGER CHECK (delete_opstamp >= 0),
    created_at_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX search_tombstones_tenant ON search_tombstones (tenant_id, created_at_ms);
