//! Local development KMS (being written).
