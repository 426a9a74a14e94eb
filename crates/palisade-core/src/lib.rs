//! Palisade's domain: typed IDs, entities, roles and permissions, errors, the ports adapters
//! implement, the identity service traits and the chat pipeline service that ties them together.

pub mod access;
pub mod audit;
pub mod auth_api;
pub mod chat;
pub mod entities;
pub mod error;
pub mod guard;
pub mod guard_policies;
pub mod identity;
pub mod ids;
pub mod jobs;
pub mod limit_policies;
pub mod models;
pub mod ports;
pub mod provider;
pub mod quota;
pub mod retention;
pub mod shared;
mod telemetry;
pub mod trace;

pub use error::{CoreError, CoreResult};
