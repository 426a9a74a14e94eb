//! `palisade user import users.yaml`: brings accounts over from spec 000's YAML user file.
//! Accepted shapes: a list of `{username, password | password_hash, role, email?}`, the same
//! list under `users:`, or a map `username: {password | password_hash, role}`. A `password`
//! that looks like a bcrypt hash (`$2a$`/`$2b$`/`$2y$`) is kept as a hash and upgraded to
//! Argon2id at the user's next login; a plain password is hashed now and, when it fails the
//! password policy, must be changed at the first login.

use std::path::Path;

use anyhow::Context;
use palisade_auth::password::is_bcrypt;
use palisade_auth::{AuthService, CreateUser};
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::CoreError;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default = "default_role")]
    role: String,
    #[serde(default)]
    email: Option<String>,
}

fn default_role() -> String {
    "user".into()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Users {
    List(Vec<Entry>),
    Map(std::collections::BTreeMap<String, Entry>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum File {
    Wrapped { users: Users },
    Bare(Users),
}

fn entries(text: &str) -> anyhow::Result<Vec<(String, Entry)>> {
    let file: File = serde_yaml::from_str(text).context("the file is not a users.yaml")?;
    let users = match file {
        File::Wrapped { users } | File::Bare(users) => users,
    };
    Ok(match users {
        Users::List(list) => list
            .into_iter()
            .map(|e| (e.username.clone().unwrap_or_default(), e))
            .collect(),
        Users::Map(map) => map.into_iter().collect(),
    })
}

pub async fn import_users(auth: &AuthService, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let list = entries(&text)?;
    anyhow::ensure!(!list.is_empty(), "{} lists no users", file.display());
    let (mut created, mut skipped) = (0, 0);
    for (username, e) in list {
        let (password, hash) = match (e.password, e.password_hash) {
            (_, Some(h)) | (Some(h), None) if is_bcrypt(&h) => (None, Some(h)),
            (Some(p), None) => (Some(p), None),
            _ => {
                eprintln!("skipped {username:?}: no password or bcrypt hash");
                skipped += 1;
                continue;
            }
        };
        let weak = match &password {
            Some(p) => auth
                .password_policy()
                .check(&username, e.email.as_deref(), p, false)
                .is_err(),
            None => false,
        };
        let req = CreateUser {
            tenant: DEFAULT_TENANT,
            username: username.clone(),
            email: e.email,
            password,
            password_hash: hash,
            role: e.role,
            must_change_password: weak,
            auth_source: "local".into(),
            skip_policy: true,
        };
        match auth.create_user(req).await {
            Ok(u) => {
                created += 1;
                let note = if weak {
                    " (weak password: must be changed at first login)"
                } else {
                    ""
                };
                println!("imported {} ({}){note}", u.username, u.role);
            }
            Err(CoreError::Conflict(_)) => {
                eprintln!("skipped {username:?}: the user already exists");
                skipped += 1;
            }
            Err(err) => {
                eprintln!("skipped {username:?}: {err}");
                skipped += 1;
            }
        }
    }
    println!("{created} imported, {skipped} skipped");
    anyhow::ensure!(created > 0 || skipped == 0, "no user could be imported");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let list =
            "users:\n  - username: analyst1\n    password: \"$2b$12$abc\"\n    role: analyst\n";
        let e = entries(list).unwrap_or_default();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "analyst1");
        let map = "analyst1:\n  password: pass123\n  role: analyst\nadmin:\n  password: x\n";
        let e = entries(map).unwrap_or_default();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].1.role, "analyst");
        assert!(entries("just a string").is_err());
    }
}
