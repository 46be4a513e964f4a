-- helpr vault: the search mode of each index-key version (PostgreSQL). Keep in step with ../sqlite/0011_index_mode.sql.
--
-- An index-key version is the scheme a tenant's index terms are made with: its mode and its
-- folding rules (normalization), and in blind mode its key.
--
-- tenant_index_keys.mode                'blind': terms are blind tokens under the wrapped key;
--                                       'plaintext': terms are the folded words themselves,
--                                       and wrapped_key and kms_key_ref are empty (there is no
--                                       key). Versions made before this column were blind.
--                                       When a tenant's configured mode differs from its
--                                       active version's, the indexer starts a rotation to a
--                                       version of the configured mode, so changing the mode
--                                       rebuilds the index the way a key rotation does.
-- tenant_index_keys.retired_terms_left  set when the version is retired by a switch, while
--                                       the second pass still has to remove its terms from
--                                       the index; cleared once that pass is done and the
--                                       index has been compacted (so no file keeps them).
ALTER TABLE tenant_index_keys ADD COLUMN mode TEXT NOT NULL DEFAULT 'blind'
    CHECK (mode IN ('blind', 'plaintext'));
ALTER TABLE tenant_index_keys ADD COLUMN retired_terms_left BOOLEAN NOT NULL DEFAULT FALSE;
