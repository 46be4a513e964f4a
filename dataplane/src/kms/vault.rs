//! OpenBao / Vault transit backend (being written).
