-- helpr vault: folding rules of index keys (PostgreSQL). Keep in step with ../sqlite/0009_index_normalization.sql.
--
-- tenant_index_keys.normalization  the version of the folding rules (search::Normalization)
--                                  the terms blinded under this key were made with, and its
--                                  queries must use. Keys made before this column existed
--                                  used version 1; a key with an older version than the
--                                  build's current one is replaced by an index-key rotation
--                                  that the indexer starts by itself.
ALTER TABLE tenant_index_keys ADD COLUMN normalization BIGINT NOT NULL DEFAULT 1
    CHECK (normalization BETWEEN 1 AND 4294967295);
