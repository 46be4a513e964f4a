//! OpenBao dev-server harness (being written).
