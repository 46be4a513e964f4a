//! PostgreSQL and SQLite implementations of the store (being written).
pub struct PgStore;
pub struct SqliteStore;
