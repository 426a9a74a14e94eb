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

/// `bytes` as lowercase hex, as `hex::encode` writes it. Digests and MACs on every request
/// (the audit chain's links, the prompt and answer digests, API-key lookups) go through this:
/// `hex::encode` collects an iterator of `char`s, ~3,500 instructions for 32 bytes, while
/// `hex::encode_to_slice` looks each byte up in its table into a buffer.
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    // The buffer is twice the input and hex digits are ASCII: neither step can fail.
    match hex::encode_to_slice(bytes, &mut out).map(|()| String::from_utf8(out)) {
        Ok(Ok(text)) => text,
        _ => hex::encode(bytes),
    }
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_lower_writes_what_hex_encode_writes() {
        assert_eq!(super::hex_lower(&[]), "");
        assert_eq!(super::hex_lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(super::hex_lower(&all), hex::encode(&all));
    }
}
