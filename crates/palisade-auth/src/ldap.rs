//! LDAP bind authentication (spec 000's `ldap_sim`): find the user's DN (a template, or a search
//! with a service account), bind as them with their password, read their groups, and map the
//! groups to a Palisade role. An empty password never reaches the server (an LDAP "simple bind"
//! with a DN and no password is an unauthenticated bind that some servers accept). Every value
//! put into a filter or DN is escaped.

use std::collections::BTreeMap;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use palisade_core::{CoreError, CoreResult};

/// How to reach and read the directory.
#[derive(Debug, Clone, Default)]
pub struct LdapSettings {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Direct bind DN, e.g. `uid={username},ou=people,dc=example,dc=com`; when absent the user
    /// is searched under `user_base` with `user_filter` (bound as `bind_dn` if given).
    pub user_dn_template: Option<String>,
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    pub user_base: String,
    /// e.g. `(uid={username})`.
    pub user_filter: String,
    pub group_base: String,
    /// e.g. `(&(objectClass=groupOfNames)(member={dn}))`.
    pub group_filter: String,
    /// The group attribute matched against `role_map` (e.g. `cn`).
    pub group_attribute: String,
    pub email_attribute: String,
    pub role_map: BTreeMap<String, String>,
    /// Role of users none of whose groups is mapped; `None` refuses them.
    pub default_role: Option<String>,
    pub timeout_secs: u64,
}

/// A user the directory vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapUser {
    pub dn: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

fn unavailable(e: impl std::fmt::Display) -> CoreError {
    tracing::warn!(error = %e, "LDAP server failure");
    CoreError::Provider(palisade_core::provider::ProviderError::Unavailable(
        "the directory server is unreachable".into(),
    ))
}

/// The directory.
pub struct Ldap {
    pub(crate) settings: LdapSettings,
}

impl Ldap {
    pub fn new(settings: LdapSettings) -> CoreResult<Ldap> {
        if !(settings.url.starts_with("ldap://") || settings.url.starts_with("ldaps://")) {
            return Err(CoreError::validation(
                "invalid_ldap",
                "auth.ldap.url must start with ldap:// or ldaps://",
            ));
        }
        if settings.user_dn_template.is_none() && settings.user_filter.is_empty() {
            return Err(CoreError::validation(
                "invalid_ldap",
                "set auth.ldap.user_dn_template or auth.ldap.user_filter",
            ));
        }
        Ok(Ldap { settings })
    }

    /// Binds as the user. `Ok(None)` for wrong credentials or unknown users.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> CoreResult<Option<LdapUser>> {
        // Never an unauthenticated bind; never control characters in a name.
        if password.is_empty()
            || username.is_empty()
            || username.len() > 254
            || username.chars().any(char::is_control)
        {
            return Ok(None);
        }
        let s = &self.settings;
        let timeout = Duration::from_secs(s.timeout_secs.max(1));
        let settings = LdapConnSettings::new().set_conn_timeout(timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &s.url)
            .await
            .map_err(unavailable)?;
        ldap3::drive!(conn);
        ldap.with_timeout(timeout);

        let dn = match &s.user_dn_template {
            Some(t) => t.replace("{username}", &ldap3::dn_escape(username)),
            None => {
                if let (Some(bdn), Some(bpw)) = (&s.bind_dn, &s.bind_password) {
                    ldap.simple_bind(bdn, bpw)
                        .await
                        .map_err(unavailable)?
                        .success()
                        .map_err(unavailable)?;
                }
                let filter = s
                    .user_filter
                    .replace("{username}", &ldap3::ldap_escape(username));
                let (rs, _) = ldap
                    .search(&s.user_base, Scope::Subtree, &filter, vec!["1.1"])
                    .await
                    .map_err(unavailable)?
                    .success()
                    .map_err(unavailable)?;
                // Zero or several matches: not a usable identity.
                if rs.len() != 1 {
                    let _ = ldap.unbind().await;
                    return Ok(None);
                }
                let mut it = rs.into_iter();
                match it.next() {
                    Some(e) => SearchEntry::construct(e).dn,
                    None => return Ok(None),
                }
            }
        };
        let bound = ldap.simple_bind(&dn, password).await.map_err(unavailable)?;
        match bound.rc {
            0 => {}
            // invalidCredentials, unwillingToPerform (empty password), noSuchObject, ...
            32 | 48 | 49 | 50 | 53 => {
                let _ = ldap.unbind().await;
                return Ok(None);
            }
            rc => {
                let _ = ldap.unbind().await;
                return Err(unavailable(format!("bind answered {rc}")));
            }
        }
        // Read the user's own entry and groups with the user's rights.
        let email = if s.email_attribute.is_empty() {
            None
        } else {
            ldap.search(
                &dn,
                Scope::Base,
                "(objectClass=*)",
                vec![s.email_attribute.as_str()],
            )
            .await
            .ok()
            .and_then(|r| r.success().ok())
            .and_then(|(rs, _)| rs.into_iter().next())
            .and_then(|e| {
                SearchEntry::construct(e)
                    .attrs
                    .get(&s.email_attribute)
                    .and_then(|v| v.first().cloned())
            })
        };
        let mut groups = Vec::new();
        if !s.group_filter.is_empty() {
            let filter = s.group_filter.replace("{dn}", &ldap3::ldap_escape(&dn));
            let (rs, _) = ldap
                .search(
                    &s.group_base,
                    Scope::Subtree,
                    &filter,
                    vec![s.group_attribute.as_str()],
                )
                .await
                .map_err(unavailable)?
                .success()
                .map_err(unavailable)?;
            for e in rs {
                let entry = SearchEntry::construct(e);
                if let Some(vals) = entry.attrs.get(&s.group_attribute) {
                    groups.extend(vals.iter().cloned());
                }
            }
        }
        let _ = ldap.unbind().await;
        Ok(Some(LdapUser { dn, email, groups }))
    }
}
