//! Access control against the real binary: roles and custom roles, tenant isolation and IDOR on
//! every object route, mass assignment, API keys, spec 004's scoped tokens and the spec
//! compatibility routes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{error_code, Server, ADMIN_PASSWORD, USER_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_custom_roles_decide_what_is_allowed() {
    // Custom roles are tables in the config file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("palisade.toml");
    std::fs::write(
        &cfg,
        "[auth.roles.analyst]\npermissions = [\"chat:send\", \"model:smollm2-135m:use\"]\n\
         description = \"spec 000's analyst\"\n\
         [auth.roles.viewer]\npermissions = [\"chat:send\", \"model:other-model:use\"]\n",
    )
    .unwrap();
    let server = Server::start(&[("PALISADE_CONFIG", cfg.to_str().unwrap())]);
    let s = &server;
    let admin = s.admin_token().await;
    let roles: Value = s
        .get(&admin, "/api/admin/roles")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for n in [
        "admin",
        "tenant_admin",
        "auditor",
        "user",
        "analyst",
        "viewer",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let (_, analyst, _) = s.new_user(&admin, "ana", "analyst", None).await;
    let (_, viewer, _) = s.new_user(&admin, "vic", "viewer", None).await;
    let (_, auditor, _) = s.new_user(&admin, "aud", "auditor", None).await;
    let (_, user, _) = s.new_user(&admin, "usr", "user", None).await;
    let chat = |t: String| async move {
        s.post(
            &t,
            "/api/chat/message",
            json!({"message": "Say hi.", "max_tokens": 4}),
        )
        .await
    };
    assert_eq!(chat(analyst.clone()).await.status(), StatusCode::OK);
    assert_eq!(chat(user.clone()).await.status(), StatusCode::OK);
    // The viewer may chat, but not with this model; the auditor may not chat at all.
    assert_eq!(
        error_code(chat(viewer.clone()).await, StatusCode::FORBIDDEN).await,
        "model_not_allowed"
    );
    assert_eq!(
        error_code(chat(auditor.clone()).await, StatusCode::FORBIDDEN).await,
        "permission_denied"
    );
    // Admin routes: only with the permission.
    for t in [&analyst, &user, &viewer] {
        for path in [
            "/api/admin/users",
            "/api/admin/tenants",
            "/api/admin/security-events",
            "/api/admin/roles",
        ] {
            assert_eq!(
                error_code(s.get(t, path).await, StatusCode::FORBIDDEN).await,
                "forbidden",
                "{path}"
            );
        }
    }
    assert_eq!(
        s.get(&auditor, "/api/admin/security-events").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        s.get(&auditor, "/api/admin/users").await.status(),
        StatusCode::FORBIDDEN
    );
    // API keys need `apikeys:manage`, which the analyst role lacks.
    let r = s
        .post(&analyst, "/api/auth/api-keys", json!({"name": "k"}))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // An unknown role is refused when creating a user.
    let r = s
        .post(
            &admin,
            "/api/admin/users",
            json!({"username": "zed", "role": "superuser"}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "unknown_role"
    );
    // A bad custom role stops the server from starting.
    std::fs::write(&cfg, "[auth.roles.bad]\npermissions = [\"root:all\"]\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["config", "validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("root:all"));
    let out = std::process::Command::new(common::bin())
        .args([
            "user",
            "create",
            "--username",
            "x1x",
            "--password-stdin",
            "--config",
        ])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_every_object_route() {
    let server = Server::start(&[]);
    let s = &server;
    let admin = s.admin_token().await;
    let r = s
        .post(&admin, "/api/admin/tenants", json!({"name": "acme"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let acme = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Default tenant: alice, bob. Acme: its tenant admin and carol.
    let (alice_id, alice, _) = s.new_user(&admin, "alice", "user", None).await;
    let (_, bob, _) = s.new_user(&admin, "bob", "user", None).await;
    let (_, acme_admin, _) = s
        .new_user(&admin, "boss", "tenant_admin", Some(&acme))
        .await;
    let (carol_id, carol, _) = s.new_user(&admin, "carol", "user", Some(&acme)).await;
    // Same username in two tenants, separate accounts; login names the tenant.
    let (alice2_id, _, _) = s.new_user(&admin, "alice", "user", Some(&acme)).await;
    assert_ne!(alice_id, alice2_id);

    // Alice's objects.
    let m: Value = s
        .post(
            &alice,
            "/api/chat/message",
            json!({"message": "My secret plan.", "max_tokens": 4}),
        )
        .await
        .json()
        .await
        .unwrap();
    let sid = m["session_id"].as_str().unwrap().to_string();
    let key: Value = s
        .post(&alice, "/api/auth/api-keys", json!({"name": "mine"}))
        .await
        .json()
        .await
        .unwrap();
    let key_id = key["id"].as_str().unwrap().to_string();
    let sessions: Value = s
        .get(&alice, "/api/auth/sessions")
        .await
        .json()
        .await
        .unwrap();
    let login_sid = sessions[0]["id"].as_str().unwrap().to_string();

    // Every object route, by another user of the same tenant and by a user of another tenant.
    for (who, intruder) in [
        ("bob", &bob),
        ("carol", &carol),
        ("acme tenant admin", &acme_admin),
    ] {
        let routes = [
            ("GET", format!("/api/chat/sessions/{sid}/messages")),
            ("PATCH", format!("/api/chat/sessions/{sid}")),
            ("DELETE", format!("/api/chat/sessions/{sid}")),
            ("DELETE", format!("/api/auth/api-keys/{key_id}")),
            ("DELETE", format!("/api/auth/sessions/{login_sid}")),
        ];
        for (method, path) in routes {
            let r = match method {
                "GET" => s.get(intruder, &path).await,
                "PATCH" => s.patch(intruder, &path, json!({"title": "pwned"})).await,
                _ => s.delete(intruder, &path).await,
            };
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{who}: {method} {path}");
        }
        // Continuing someone else's conversation.
        let r = s
            .post(
                intruder,
                "/api/chat/message",
                json!({"message": "hi", "session_id": sid, "max_tokens": 4}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{who}");
        // Listing shows none of it.
        let list: Value = s
            .get(intruder, "/api/chat/sessions")
            .await
            .json()
            .await
            .unwrap();
        assert!(!list.to_string().contains(&sid), "{who}");
    }
    // Alice still has everything.
    assert_eq!(
        s.get(&alice, &format!("/api/chat/sessions/{sid}/messages"))
            .await
            .status(),
        StatusCode::OK
    );
    let keys: Value = s
        .get(&alice, "/api/auth/api-keys")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys[0]["revoked"], false);

    // The acme tenant admin manages acme only: the default tenant's users look absent.
    let users: Value = s
        .get(&acme_admin, "/api/admin/users")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"carol") && !names.contains(&"bob"),
        "{names:?}"
    );
    let default_tenant = "00000000-0000-7000-8000-000000000001";
    for (method, path) in [
        ("GET", format!("/api/admin/users/{alice_id}")),
        ("PATCH", format!("/api/admin/users/{alice_id}")),
        ("DELETE", format!("/api/admin/users/{alice_id}")),
        (
            "POST",
            format!("/api/admin/users/{alice_id}/reset-password"),
        ),
        ("GET", format!("/api/admin/users/{alice_id}/sessions")),
        ("DELETE", format!("/api/admin/users/{alice_id}/sessions")),
        (
            "DELETE",
            format!("/api/admin/users/{alice_id}/sessions/{login_sid}"),
        ),
        (
            "GET",
            format!("/api/admin/users?tenant_id={default_tenant}"),
        ),
        (
            "GET",
            format!("/api/admin/users/{alice_id}?tenant_id={default_tenant}"),
        ),
    ] {
        let r = match method {
            "GET" => s.get(&acme_admin, &path).await,
            "PATCH" => {
                s.patch(&acme_admin, &path, json!({"is_active": false}))
                    .await
            }
            "POST" => s.post(&acme_admin, &path, json!({})).await,
            _ => s.delete(&acme_admin, &path).await,
        };
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert_eq!(s.get(&alice, "/api/auth/me").await.status(), StatusCode::OK);
    // Tenants are the platform admin's.
    assert_eq!(
        s.get(&acme_admin, "/api/admin/tenants").await.status(),
        StatusCode::FORBIDDEN
    );
    // The tenant admin cannot hand out power they lack, nor touch users above them.
    let r = s
        .post(
            &acme_admin,
            "/api/admin/users",
            json!({"username": "evil", "role": "admin"}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "role_not_allowed"
    );
    let r = s
        .patch(
            &acme_admin,
            &format!("/api/admin/users/{carol_id}"),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "role_not_allowed"
    );
    let r = s
        .post(
            &acme_admin,
            "/api/admin/users",
            json!({"username": "dan", "role": "user", "tenant_id": default_tenant}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // ... but manages carol.
    let r = s
        .patch(
            &acme_admin,
            &format!("/api/admin/users/{carol_id}"),
            json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        s.get(&carol, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Tenant login by name; a disabled tenant cannot log in.
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "boss", "password": USER_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "boss", "password": USER_PASSWORD, "tenant": "acme"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .patch(
            &admin,
            &format!("/api/admin/tenants/{acme}"),
            json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        s.get(&acme_admin, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "boss", "password": USER_PASSWORD, "tenant": "acme"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_assignment_is_refused() {
    let s = Server::start(&[("PALISADE_AUTH__REGISTRATION", "open")]);
    let admin = s.admin_token().await;
    for extra in [
        json!({"role": "admin"}),
        json!({"tenant_id": "00000000-0000-7000-8000-000000000009"}),
        json!({"is_active": true, "owner": "x"}),
    ] {
        let mut body = json!({"username": "mallet", "password": "Orchid-Ferry-Basalt-3318"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = s.post_public("/api/auth/register", body).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{extra}");
    }
    let r = s
        .post_public(
            "/api/auth/register",
            json!({"username": "mallet", "password": "Orchid-Ferry-Basalt-3318"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let t = s.login("mallet", "Orchid-Ferry-Basalt-3318").await;
    let tok = t["access_token"].as_str().unwrap().to_string();
    // Self-service changes cannot carry a role either.
    let r = s.patch(&tok, "/api/auth/me", json!({"current_password": "Orchid-Ferry-Basalt-3318", "email": "m@x.test", "role": "admin"})).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = s
        .patch(
            &tok,
            "/api/auth/me",
            json!({"current_password": "Orchid-Ferry-Basalt-3318", "email": "m@x.test"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = s.get(&tok, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(
        (me["role"].as_str(), me["email"].as_str()),
        (Some("user"), Some("m@x.test"))
    );
    // E-mail change needs the password.
    let r = s
        .patch(
            &tok,
            "/api/auth/me",
            json!({"current_password": "wrong-wrong-wrong-1", "email": "n@x.test"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Chat sessions cannot be moved to another owner; admin updates refuse unknown fields.
    let r = s
        .patch(
            &tok,
            "/api/chat/sessions/00000000-0000-7000-8000-000000000001",
            json!({"title": "t", "user_id": "x"}),
        )
        .await;
    assert!(r.status().is_client_error());
    let me_id = me["id"].as_str().unwrap();
    let r = s
        .patch(
            &admin,
            &format!("/api/admin/users/{me_id}"),
            json!({"tenant_id": "00000000-0000-7000-8000-000000000009"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Admins cannot lock themselves out.
    let admin_id = s
        .get(&admin, "/api/auth/me")
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .patch(
            &admin,
            &format!("/api/admin/users/{admin_id}"),
            json!({"is_active": false}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "cannot_modify_self"
    );
    let r = s
        .delete(&admin, &format!("/api/admin/users/{admin_id}"))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "cannot_modify_self"
    );
    // The admin API lists, searches and pages.
    let list: Value = s
        .get(&admin, "/api/admin/users?search=mall&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["users"][0]["username"], "mallet");
    let r = s.get(&admin, "/api/admin/users?limit=1&bogus=1").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let _ = ADMIN_PASSWORD;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_scopes_models_and_revocation() {
    let s = Server::start(&[]);
    let admin = s.admin_token().await;
    let (_, alice, _) = s.new_user(&admin, "alice", "user", None).await;
    let r = s
        .post(
            &alice,
            "/api/auth/api-keys",
            json!({"name": "ci", "expires_in_days": 30}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let secret = created["api_key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("pk_") && secret.len() >= 40);
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    // Shown once: the list has no secret.
    let list: Value = s
        .get(&alice, "/api/auth/api-keys")
        .await
        .json()
        .await
        .unwrap();
    assert!(!list.to_string().contains(&secret));
    assert!(list[0]["last_used_at"].is_null());
    // Usable as a bearer for chat.
    let r = s
        .post(
            &secret,
            "/api/chat/message",
            json!({"message": "Say hi.", "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = s
        .get(&alice, "/api/auth/api-keys")
        .await
        .json()
        .await
        .unwrap();
    assert!(list[0]["last_used_at"].is_string());
    // A key cannot mint keys (interactive login needed), nor escalate.
    let r = s
        .post(&secret, "/api/auth/api-keys", json!({"name": "child"}))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .post(
            &alice,
            "/api/auth/api-keys",
            json!({"name": "x", "scopes": ["users:manage"]}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "scope_not_allowed"
    );
    let r = s
        .post(
            &alice,
            "/api/auth/api-keys",
            json!({"name": "x", "scopes": ["nonsense"]}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_permission"
    );
    // A model allow-list binds.
    let k2: Value = s
        .post(
            &alice,
            "/api/auth/api-keys",
            json!({"name": "other", "models": ["some-other-model"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let k2 = k2["api_key"].as_str().unwrap().to_string();
    let r = s
        .post(
            &k2,
            "/api/chat/message",
            json!({"message": "Say hi.", "max_tokens": 4}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "model_not_allowed"
    );
    // A read-only scope set cannot chat.
    let k3: Value = s
        .post(
            &alice,
            "/api/auth/api-keys",
            json!({"name": "ro", "scopes": ["model:*:use"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let k3 = k3["api_key"].as_str().unwrap().to_string();
    let r = s
        .post(
            &k3,
            "/api/chat/message",
            json!({"message": "Say hi.", "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Tampered or unknown keys.
    let mut bad = secret.clone();
    bad.pop();
    bad.push(if secret.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        s.get(&bad, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.get("pk_", "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Revoked: refused at once.
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        s.delete(&alice, &format!("/api/auth/api-keys/{id}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get(&secret, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.delete(&alice, &format!("/api/auth/api-keys/{id}x"))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_llm_tokens_and_spec_compat_routes() {
    let server = Server::start(&[]);
    let s = &server;
    // Spec 004 smoke test, verbatim routes.
    let r = s
        .post_public(
            "/auth/login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let user_token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .post(
            &user_token,
            "/auth/scoped-token",
            json!({"model": MODEL, "max_tokens": 32, "scopes": ["llm:generate"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let st: Value = r.json().await.unwrap();
    assert_eq!(st["expires_in"], 60);
    let llm = st["llm_token"].as_str().unwrap().to_string();
    let generate = |token: String, body: Value| async move {
        s.client
            .post(s.url("/api/v1/llm/generate"))
            .header("X-LLM-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap()
    };
    let r = generate(
        llm.clone(),
        json!({"prompt": "What is the capital of France?", "model": MODEL, "max_tokens": 16}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let g: Value = r.json().await.unwrap();
    assert_eq!(g["model"], MODEL);
    assert!(g["tokens_used"].as_u64().unwrap() >= 1);
    assert!(g["latency_ms"].is_u64());
    assert!(!g["content"].as_str().unwrap().is_empty());
    // Wrong model, a bigger cap, the user token in the header, no header, a scoped token as a
    // bearer, and scopes other than llm:generate.
    let r = generate(
        llm.clone(),
        json!({"prompt": "x", "model": "other", "max_tokens": 8}),
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "model_not_allowed"
    );
    let r = generate(
        llm.clone(),
        json!({"prompt": "x", "model": MODEL, "max_tokens": 64}),
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "max_tokens_exceeded"
    );
    let r = generate(
        user_token.clone(),
        json!({"prompt": "x", "model": MODEL, "max_tokens": 8}),
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    let r = s
        .post_public(
            "/api/v1/llm/generate",
            json!({"prompt": "x", "model": MODEL}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.get(&llm, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = s
        .post(
            &user_token,
            "/api/auth/scoped-token",
            json!({"model": MODEL, "max_tokens": 8, "scopes": ["users:manage"]}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_scope"
    );
    let r = s
        .post(
            &user_token,
            "/api/auth/scoped-token",
            json!({"model": MODEL, "max_tokens": 100000, "scopes": ["llm:generate"]}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_max_tokens"
    );
    let r = s
        .post(
            &user_token,
            "/api/auth/scoped-token",
            json!({"model": MODEL, "max_tokens": -1, "scopes": ["llm:generate"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A scoped token dies with its user's sessions (logout everywhere).
    assert_eq!(
        s.post(&user_token, "/api/auth/logout-all", json!({}))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let r = generate(llm, json!({"prompt": "x", "model": MODEL, "max_tokens": 8})).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    // Spec 000: POST /login, then POST /chat {prompt} with the bearer.
    let r = s
        .post_public(
            "/login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let tok = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .post(
            &tok,
            "/chat",
            json!({"prompt": "What is the capital of France? Answer in one word."}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.unwrap();
    // Spec 000 sends no sampling parameters, so the answer varies; the pipeline is the same
    // one chat_e2e checks for "Paris" at temperature 0. Here: an answer, stored as a session.
    assert!(!c["response"].as_str().unwrap().trim().is_empty(), "{c}");
    assert!(c["tokens_used"].as_u64().unwrap() >= 1);
    assert_eq!(c["model"], MODEL);
    let sid = c["session_id"].as_str().unwrap();
    let page: Value = s
        .get(&tok, &format!("/api/chat/sessions/{sid}/messages"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["messages"][0]["content"],
        "What is the capital of France? Answer in one word."
    );
    assert_eq!(page["messages"][1]["content"], c["response"]);
    let r = s
        .client
        .post(s.url("/chat"))
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_routes_can_be_turned_off() {
    let s = Server::start(&[("PALISADE_AUTH__COMPAT_ROUTES", "false")]);
    let r = s
        .post_public(
            "/login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_yaml_import_upgrades_bcrypt() {
    let s = Server::start(&[]);
    let admin = s.admin_token().await;
    let hash = bcrypt::hash("pass123", 4).unwrap();
    let yaml = format!(
        "users:\n  - username: analyst1\n    password: \"{hash}\"\n    role: user\n  \
         - username: plain1\n    password: pass123\n    role: user\n"
    );
    let file = s.data_dir().join("users.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = common::command_in(s.data_dir())
        .args(["user", "import"])
        .arg(&file)
        .arg("--data-dir")
        .arg(s.data_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 imported"), "{stdout}");
    // The bcrypt user logs in with the old password, and the hash becomes Argon2id.
    let t = s.login("analyst1", "pass123").await;
    let tok = t["access_token"].as_str().unwrap();
    let me: Value = s.get(tok, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(me["must_change_password"], false);
    let db = stored_hash(s.data_dir(), "analyst1");
    assert!(db.starts_with("$argon2id$"), "{db}");
    // The weak plain password must be changed at first login.
    let t = s.login("plain1", "pass123").await;
    let me: Value = s
        .get(t["access_token"].as_str().unwrap(), "/api/auth/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["must_change_password"], true);
    let _ = admin;
}

/// Reads a user's stored password hash from the database, as an outside tool would.
fn stored_hash(dir: &std::path::Path, user: &str) -> String {
    common::sql(
        dir,
        &format!("SELECT password_hash FROM users WHERE username = '{user}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_only_registration() {
    let server = Server::start(&[("PALISADE_AUTH__REGISTRATION", "invite")]);
    let s = &server;
    let admin = s.admin_token().await;
    let reg = |invite: Option<String>, name: &'static str| async move {
        let mut body = json!({"username": name, "password": "Orchid-Ferry-Basalt-3318"});
        if let Some(i) = invite {
            body["invite"] = json!(i);
        }
        s.post_public("/api/auth/register", body).await
    };
    // No code, or a made-up one: refused.
    assert_eq!(
        error_code(reg(None, "newbie").await, StatusCode::FORBIDDEN).await,
        "invalid_invite"
    );
    assert_eq!(
        error_code(
            reg(Some("made-up".into()), "newbie").await,
            StatusCode::FORBIDDEN
        )
        .await,
        "invalid_invite"
    );
    // An administrator invites an auditor.
    let r = s
        .post(
            &admin,
            "/api/admin/invites",
            json!({"role": "auditor", "expires_in_days": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let code = r.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_string();
    // A failed registration (weak password) does not spend the code.
    let r = s
        .post_public(
            "/api/auth/register",
            json!({"username": "newbie", "password": "short", "invite": code}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = reg(Some(code.clone()), "newbie").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "auditor");
    // Used once only.
    assert_eq!(
        error_code(reg(Some(code), "second").await, StatusCode::FORBIDDEN).await,
        "invalid_invite"
    );
    // Nobody can invite into a role above their own.
    let (_, user, _) = s.new_user(&admin, "plain", "user", None).await;
    assert_eq!(
        s.post(&user, "/api/admin/invites", json!({"role": "user"}))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = s
        .post(
            &admin,
            "/api/admin/invites",
            json!({"role": "user", "expires_in_days": 0}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_expiry"
    );
}
