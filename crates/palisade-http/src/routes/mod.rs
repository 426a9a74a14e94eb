//! Route handlers, grouped by area. Handlers are thin: parse, call a service, shape the answer.

pub mod account;
pub mod admin;
pub mod auth;
pub mod chat;
pub mod compat;
pub mod guard;
pub mod health;
pub mod jobs;
pub mod limits;
pub mod models;
pub mod openai;
pub mod retention;
pub mod usage;
pub mod ws;
