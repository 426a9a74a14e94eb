//! Conversions between database rows and domain types.

use std::str::FromStr;

use palisade_core::{CoreError, CoreResult};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

/// Reads a UUID column into a typed id.
pub(crate) fn id<T: From<Uuid>>(row: &AnyRow, col: &str) -> CoreResult<T> {
    let s: String = row.try_get(col).map_err(crate::db_err)?;
    Uuid::from_str(&s)
        .map(T::from)
        .map_err(|_| CoreError::Storage(format!("corrupt id in column {col}")))
}

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> CoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(crate::db_err)
}
