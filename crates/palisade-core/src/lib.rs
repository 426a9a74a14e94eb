//! Palisade's domain: typed IDs, entities, errors, the ports adapters implement, and the chat
//! pipeline service that ties them together.

pub mod chat;
pub mod entities;
pub mod error;
pub mod ids;
pub mod ports;
pub mod provider;

pub use error::{CoreError, CoreResult};
