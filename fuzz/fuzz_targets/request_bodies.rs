//! The JSON request bodies of the HTTP API (`palisade-types`, what the routes deserialize):
//! nothing panics on any input, and a body that parses survives a round trip (serialized and
//! parsed again, it is accepted and means the same).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_types::identity::*;
use palisade_types::openai::ChatCompletionRequest;
use palisade_types::*;

macro_rules! round_trip {
    ($data:expr, $($t:ty),+ $(,)?) => {$(
        if let Ok(v) = serde_json::from_slice::<$t>($data) {
            let again = serde_json::to_vec(&v).expect("a parsed body serializes");
            let back: $t = serde_json::from_slice(&again)
                .unwrap_or_else(|e| panic!("{} does not parse its own output: {e}", stringify!($t)));
            assert_eq!(
                serde_json::to_value(&back).ok(),
                serde_json::to_value(&v).ok(),
                "{} changed in a round trip",
                stringify!($t)
            );
        }
    )+};
}

fuzz_target!(|data: &[u8]| {
    round_trip!(
        data,
        LoginRequest,
        RegisterRequest,
        RefreshRequest,
        ChatMessageRequest,
        UpdateSessionRequest,
        ChatCompletionRequest,
        MfaLoginRequest,
        ChangePasswordRequest,
        UpdateMeRequest,
        TotpEnableRequest,
        TotpDisableRequest,
        CreateApiKeyRequest,
        ScopedTokenRequest,
        GenerateRequest,
        CompatChatRequest,
        AdminCreateUserRequest,
        AdminUpdateUserRequest,
        CreateTenantRequest,
        UpdateTenantRequest,
        CreateInviteRequest,
    );
});
