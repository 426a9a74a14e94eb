//! Password hashing (Argon2id, OWASP parameters; bcrypt hashes of imported users verified and
//! upgraded) and the password policy (NIST SP 800-63B-4 by default, composition rules optional).

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

/// True for a bcrypt hash (`$2a$`, `$2b$`, `$2y$`), as imported from users.yaml.
pub fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// Checks a password against a stored hash (Argon2id PHC or bcrypt). A malformed hash counts
/// as a mismatch. CPU-heavy: call from a blocking thread.
pub fn verify_password(stored: &str, password: &str) -> bool {
    if is_bcrypt(stored) {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let Ok(a) = argon2() else { return false };
    a.verify_password(password.as_bytes(), &parsed).is_ok()
}

/// True when a successful login should re-hash the password with the current parameters.
pub fn needs_rehash(stored: &str) -> bool {
    if is_bcrypt(stored) {
        return true;
    }
    match PasswordHash::new(stored) {
        Ok(h) => {
            h.algorithm.as_str() != "argon2id"
                || h.params.get_decimal("m").unwrap_or(0) < 19 * 1024
                || h.params.get_decimal("t").unwrap_or(0) < 2
        }
        Err(_) => false,
    }
}

/// Username rule: 3–50 characters of ASCII letters, digits, `_`, `.`, `@` or `-`.
pub fn check_username(name: &str) -> CoreResult<()> {
    let ok_len = (3..=50).contains(&name.len());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(CoreError::validation(
            "invalid_username",
            "username must have 3 to 50 characters: letters, digits, '_', '.', '@' or '-'",
        ))
    }
}

/// The password rules in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Minimum length when the password is the only factor (NIST: 15).
    pub min_length: usize,
    /// Minimum length when the account has a second factor (NIST: 8).
    pub min_length_with_2fa: usize,
    /// Maximum length (NIST: at least 64; we allow far more and never truncate).
    pub max_length: usize,
    /// Minimum zxcvbn score (0–4); 3 rejects common and guessable passwords.
    pub min_strength: u8,
    /// Spec 003's upper/lower/digit rule; off by default (NIST advises against it).
    pub require_composition: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 15,
            min_length_with_2fa: 8,
            max_length: 1024,
            min_strength: 3,
            require_composition: false,
        }
    }
}

impl PasswordPolicy {
    /// Checks a new password for a user.
    pub fn check(
        &self,
        username: &str,
        email: Option<&str>,
        password: &str,
        has_2fa: bool,
    ) -> CoreResult<()> {
        let n = password.chars().count();
        let min = if has_2fa {
            self.min_length_with_2fa
        } else {
            self.min_length
        };
        if n < min {
            return Err(CoreError::validation(
                "weak_password",
                format!("password must have at least {min} characters"),
            ));
        }
        if n > self.max_length {
            return Err(CoreError::validation(
                "invalid_password",
                format!("password must have at most {} characters", self.max_length),
            ));
        }
        let lower = password.to_lowercase();
        let mut personal: Vec<&str> = vec![username];
        if let Some(e) = email {
            personal.push(e);
            if let Some((local, _)) = e.split_once('@') {
                personal.push(local);
            }
        }
        for p in &personal {
            if p.len() >= 3 && lower.contains(&p.to_lowercase()) {
                return Err(CoreError::validation(
                    "weak_password",
                    "password must not contain the username or e-mail address",
                ));
            }
        }
        if self.require_composition {
            let upper = password.chars().any(char::is_uppercase);
            let lower = password.chars().any(char::is_lowercase);
            let digit = password.chars().any(|c| c.is_ascii_digit());
            if !(upper && lower && digit) {
                return Err(CoreError::validation(
                    "weak_password",
                    "password must contain an upper-case letter, a lower-case letter and a digit",
                ));
            }
        }
        // zxcvbn judges ASCII; long non-ASCII passphrases pass on length alone.
        if password.is_ascii() {
            let score: u8 = zxcvbn::zxcvbn(password, &personal).score().into();
            if score < self.min_strength {
                return Err(CoreError::validation(
                    "weak_password",
                    "password is too easy to guess (common words, patterns or known passwords)",
                ));
            }
        }
        Ok(())
    }
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
        assert!(!needs_rehash(&h));
    }

    #[test]
    fn bcrypt_import_verifies_and_asks_for_rehash() {
        let h = bcrypt::hash("pass123-imported", 4).unwrap_or_default();
        assert!(is_bcrypt(&h));
        assert!(verify_password(&h, "pass123-imported"));
        assert!(!verify_password(&h, "pass124-imported"));
        assert!(needs_rehash(&h));
    }

    #[test]
    fn policy_nist_defaults() {
        let p = PasswordPolicy::default();
        assert!(check_username("ab").is_err());
        assert!(check_username("alice_01").is_ok());
        assert!(check_username("al ice").is_err());
        // Too short without 2FA, fine with it.
        assert!(p.check("alice", None, "Vq7#tLm2x!", false).is_err());
        assert!(p.check("alice", None, "Vq7#tLm2x!", true).is_ok());
        // Common or patterned passwords, even long ones.
        assert!(p.check("alice", None, "passwordpassword", false).is_err());
        assert!(p.check("alice", None, "123456789012345", false).is_err());
        assert!(p.check("alice", None, "qwertyuiopasdfgh", false).is_err());
        // Contains the username or the e-mail's local part.
        assert!(p
            .check("alice", None, "alice-in-chains-violet-87", false)
            .is_err());
        assert!(p
            .check(
                "u1",
                Some("carol.smith@example.com"),
                "my carol.smith river orbit",
                false
            )
            .is_err());
        // A long passphrase with no composition is accepted; no truncation at 72/128.
        assert!(p
            .check("alice", None, "violet orbit tundra pickle", false)
            .is_ok());
        let long: String = "tundra-violet-orbit-".repeat(10);
        assert!(p.check("alice", None, &long, false).is_ok());
        assert!(p.check("alice", None, &"x".repeat(1025), false).is_err());
        // Composition rules only when configured.
        let strict = PasswordPolicy {
            require_composition: true,
            ..PasswordPolicy::default()
        };
        assert!(strict
            .check("alice", None, "violet orbit tundra pickle", false)
            .is_err());
        assert!(strict
            .check("alice", None, "Violet orbit tundra pickle 9", false)
            .is_ok());
    }
}
