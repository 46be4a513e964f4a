-- helpr vault: index-key rotation (SQLite). Keep in step with ../postgres/0003_index_key_rotation.sql.

-- The life of an index key version:
--   building: created by a rotation; indexers blind every term under it as well as under the
--             active key while the tenant is re-indexed from the sealed store. Never queried.
--   active:   queries are blinded under it (exactly one per tenant once the first exists).
--   retired:  replaced by the next version; no longer used for anything. Its terms leave the
--             index as the second re-index pass (started by the switch) rewrites every message.
ALTER TABLE tenant_index_keys ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
    CHECK (state IN ('building', 'active', 'retired'));
CREATE UNIQUE INDEX tenant_index_keys_one_active ON tenant_index_keys (tenant_id)
    WHERE state = 'active';
CREATE UNIQUE INDEX tenant_index_keys_one_building ON tenant_index_keys (tenant_id)
    WHERE state = 'building';
