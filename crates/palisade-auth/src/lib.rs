//! Palisade identity: password hashing, EdDSA access tokens, refresh-token rotation and the
//! identity service the HTTP layer authenticates callers with.

pub mod jwt;
pub mod password;
pub mod service;

pub use jwt::KeyRing;
pub use service::{AuthService, AuthSettings, RegistrationMode};
