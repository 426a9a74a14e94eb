//! Typed identifiers: UUIDv7 newtypes so a session id can never be passed where a user id goes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = crate::error::CoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| {
                    crate::error::CoreError::validation(
                        "invalid_id",
                        concat!("not a valid ", stringify!($name), " (expected a UUID)"),
                    )
                })
            }
        }
    };
}

typed_id!(
    /// A tenant (organisation) id.
    TenantId
);
typed_id!(
    /// A user id.
    UserId
);
typed_id!(
    /// A chat session (conversation) id.
    SessionId
);
typed_id!(
    /// A message id.
    MessageId
);
typed_id!(
    /// A refresh-token family id (all tokens rotated from one login).
    TokenFamilyId
);

typed_id!(
    /// An API key id.
    ApiKeyId
);

/// The id of the tenant created on first start; single-tenant installs use only this one.
pub const DEFAULT_TENANT: TenantId =
    TenantId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let id = SessionId::new();
        let back: SessionId = id.to_string().parse().unwrap_or_default();
        assert_eq!(id, back);
        assert!("not-a-uuid".parse::<SessionId>().is_err());
    }
}
