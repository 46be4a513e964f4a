//! PostgreSQL fresh-database harness (being written).
