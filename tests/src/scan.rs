//! Reads every cell of every table as bytes, to check what a database really holds.
//!
//! Used to prove that deleted messages leave nothing behind and that no plaintext (canary
//! strings) reaches the database. Each cell becomes one [`Cell`]:
//!
//! * binary columns (`bytea`, `BLOB`) as their raw bytes,
//! * text columns as their UTF-8 bytes,
//! * numbers, booleans and everything else as their text form (decimal for numbers),
//!
//! and `NULL` cells are skipped.

use sqlx::Row;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

/// One non-NULL cell: table, column and the cell's bytes.
pub type Cell = (String, String, Vec<u8>);

/// Every non-NULL cell of every table in the `public` schema of a PostgreSQL database
/// (including sqlx's migration bookkeeping table).
pub async fn dump_all_bytes_postgres(pool: &PgPool) -> anyhow::Result<Vec<Cell>> {
    let columns = sqlx::query(
        "SELECT c.table_name::text AS table_name, c.column_name::text AS column_name, \
                c.data_type::text AS data_type \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(pool)
    .await?;

    let mut cells = Vec::new();
    for column in columns {
        let table: String = column.try_get("table_name")?;
        let name: String = column.try_get("column_name")?;
        let data_type: String = column.try_get("data_type")?;
        let expr = if data_type == "bytea" {
            quote_ident(&name)
        } else {
            format!("convert_to({}::text, 'UTF8')", quote_ident(&name))
        };
        let sql = format!("SELECT {expr} FROM {}", quote_ident(&table));
        let rows = sqlx::query(&sql).fetch_all(pool).await?;
        for row in rows {
            let value: Option<Vec<u8>> = row.try_get(0)?;
            if let Some(bytes) = value {
                cells.push((table.clone(), name.clone(), bytes));
            }
        }
    }
    Ok(cells)
}

/// Every non-NULL cell of every table of a SQLite database (including `sqlite_sequence`
/// and sqlx's migration bookkeeping table).
///
/// Uses `CAST(column AS BLOB)`, which keeps blobs as they are and turns text and numbers
/// into the bytes of their text form.
pub async fn dump_all_bytes_sqlite(pool: &SqlitePool) -> anyhow::Result<Vec<Cell>> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(pool)
            .await?;

    let mut cells = Vec::new();
    for table in tables {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(&table)
                .fetch_all(pool)
                .await?;
        for name in columns {
            let sql = format!(
                "SELECT CAST({} AS BLOB) FROM {}",
                quote_ident(&name),
                quote_ident(&table)
            );
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            for row in rows {
                let value: Option<Vec<u8>> = row.try_get(0)?;
                if let Some(bytes) = value {
                    cells.push((table.clone(), name.clone(), bytes));
                }
            }
        }
    }
    Ok(cells)
}

/// The (table, column) of every cell that contains `needle` anywhere in its bytes.
pub fn find_bytes(cells: &[Cell], needle: &[u8]) -> Vec<(String, String)> {
    if needle.is_empty() {
        return Vec::new();
    }
    cells
        .iter()
        .filter(|(_, _, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(table, column, _)| (table.clone(), column.clone()))
        .collect()
}

/// Whether `needle` occurs anywhere in `haystack` (e.g. a raw database file).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// An SQL identifier in double quotes (valid in both PostgreSQL and SQLite).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
