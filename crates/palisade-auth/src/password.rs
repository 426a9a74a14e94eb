//! Password hashing (Argon2id, OWASP parameters) and the password/username rules.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use palisade_core::{CoreError, CoreResult};

/// OWASP's Argon2id minimum: m = 19 MiB, t = 2, p = 1.
fn argon2() -> CoreResult<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .map_err(|e| CoreError::Internal(format!("argon2 params: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string. CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> CoreResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CoreError::Internal(format!("argon2 hash: {e}")))
}

/// Checks a password against a PHC string. A malformed hash counts as a mismatch.
pub fn verify_password(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(a) = argon2() else { return false };
    a.verify_password(password.as_bytes(), &parsed).is_ok()
}

/// Username rule: 3–50 characters of ASCII letters, digits, `_`, `.` or `-`.
pub fn check_username(name: &str) -> CoreResult<()> {
    let ok_len = (3..=50).contains(&name.len());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(CoreError::validation(
            "invalid_username",
            "username must have 3 to 50 characters: letters, digits, '_', '.' or '-'",
        ))
    }
}

/// Password rule (NIST SP 800-63B): 8 to 256 characters, not the username.
pub fn check_password(username: &str, password: &str) -> CoreResult<()> {
    let n = password.chars().count();
    if n < 8 {
        return Err(CoreError::validation(
            "weak_password",
            "password must have at least 8 characters",
        ));
    }
    if n > 256 {
        return Err(CoreError::validation(
            "invalid_password",
            "password must have at most 256 characters",
        ));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(CoreError::validation(
            "weak_password",
            "password must not be the username",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap_or_default();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong horse"));
        assert!(!verify_password("garbage", "x"));
    }

    #[test]
    fn rules() {
        assert!(check_username("ab").is_err());
        assert!(check_username("alice_01").is_ok());
        assert!(check_username("al ice").is_err());
        assert!(check_password("alice", "short").is_err());
        assert!(check_password("alicealice", "AliceAlice").is_err());
        assert!(check_password("alice", "long enough pw").is_ok());
    }
}
