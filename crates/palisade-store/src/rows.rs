//! Conversions between database rows and domain types.

use std::str::FromStr;

use palisade_core::{CoreError, CoreResult};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

/// Reads a UUID column into a typed id.
pub(crate) fn id<T: From<Uuid>>(row: &SqliteRow, col: &str) -> CoreResult<T> {
    let s: String = row.try_get(col).map_err(crate::db_err)?;
    Uuid::from_str(&s)
        .map(T::from)
        .map_err(|_| CoreError::Storage(format!("corrupt id in column {col}")))
}

pub(crate) fn get<'r, T>(row: &'r SqliteRow, col: &str) -> CoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(col).map_err(crate::db_err)
}
