//! Palisade identity: password hashing and policy, EdDSA tokens with key rotation, refresh-token
//! rotation, login throttling, TOTP, API keys, scoped LLM tokens, and the identity, account and
//! admin services the HTTP layer calls.

pub mod account;
pub mod admin;
pub mod external;
pub mod jwt;
pub mod ldap;
pub mod oidc;
pub mod password;
pub mod service;
pub mod throttle;

pub use jwt::KeyRing;
pub use password::PasswordPolicy;
pub use service::{AuthRepos, AuthService, AuthSettings, CreateUser, RegistrationMode};
pub use throttle::ThrottlePolicy;
