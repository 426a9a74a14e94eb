//! `/api/chat/ws`: chat over a WebSocket (spec 003 §5.2.5), with the same pipeline, guard and
//! storage as `POST /api/chat/message`.
//!
//! Browsers cannot set an `Authorization` header on a WebSocket handshake, and tokens never travel
//! in query strings. So a client first asks `POST /api/chat/ws/ticket` (authenticated as usual)
//! for a single-use ticket that lives 30 seconds, then opens `GET /api/chat/ws?ticket=...`. The
//! ticket stands for the caller's credential, which is checked again before every message: a
//! revoked session, a disabled user or an expired access token stops the socket from chatting
//! (the client sends `{"type":"auth","token":...}` with a fresh token to carry on).
//!
//! Client messages (JSON text frames):
//! - `{"type":"message","content":"...","session_id"?,"model"?,"temperature"?,"max_tokens"?,...}`
//! - `{"type":"stop"}` cancels the generation (the partial answer is stored, as with SSE);
//! - `{"type":"auth","token":"..."}` replaces the credential;
//! - `{"type":"ping"}` answers `{"type":"pong"}`.
//!
//! Server messages: `ready`, `start`, `token`, `message` (the stored answer, with metadata),
//! `stopped`, `pong`, `authenticated` and `error` (`code`, `message`, `categories` for guard blocks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Json;
use palisade_core::auth_api::ClientInfo;
use palisade_core::chat::{ChatEvent, ChatInput, ChatRun, SamplingInput};
use palisade_core::entities::{millis_to_rfc3339, Principal};
use palisade_core::shared::SharedState;
use palisade_core::CoreError;
use rand::RngCore;
use ring::{aead, digest};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{bearer, Auth, Client};
use crate::error::{ApiError, ApiQuery};
use crate::routes::chat::{message_json, request_id};
use crate::AppState;

/// Read buffer capacity and write batching threshold of one WebSocket.
const WS_BUFFER_BYTES: usize = 4 * 1024;

/// How long a ticket may wait before it is used.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// A socket that sent nothing (not even a pong) for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Interval of the server's ping frames.
const PING_EVERY: Duration = Duration::from_secs(25);

/// Single-use WebSocket tickets, kept in the state replicas share (so the ticket one replica
/// issues opens a socket on another). What is stored cannot be used on its own: the key is a
/// hash of the ticket and the credential is sealed with a key derived from it, so only the
/// ticket's holder can read it back.
pub struct WsTickets {
    shared: Arc<dyn SharedState>,
    ttl: Duration,
}

impl WsTickets {
    pub fn new(shared: Arc<dyn SharedState>) -> Self {
        Self::with_ttl(shared, TICKET_TTL)
    }

    pub fn with_ttl(shared: Arc<dyn SharedState>, ttl: Duration) -> Self {
        Self { shared, ttl }
    }

    /// The shared-state key of a ticket's raw bytes and the sealing key derived from them.
    fn keys(raw: &[u8; 32]) -> Result<(String, aead::LessSafeKey), ApiError> {
        let id = digest::digest(
            &digest::SHA256,
            &[&b"palisade ws ticket id "[..], &raw[..]].concat(),
        );
        let k = digest::digest(
            &digest::SHA256,
            &[&b"palisade ws ticket key "[..], &raw[..]].concat(),
        );
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, k.as_ref())
            .map_err(|_| ApiError::from(CoreError::Internal("ticket key".into())))?;
        Ok((
            format!("wst:{}", hex::encode(id.as_ref())),
            aead::LessSafeKey::new(key),
        ))
    }

    /// A new ticket standing for `token`.
    pub async fn issue(&self, token: &str) -> Result<String, ApiError> {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let (id, key) = Self::keys(&raw)?;
        let mut sealed = token.as_bytes().to_vec();
        // Each key seals exactly one value, so a fixed nonce is never reused under a key.
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key([0u8; 12]),
            aead::Aad::empty(),
            &mut sealed,
        )
        .map_err(|_| ApiError::from(CoreError::Internal("sealing a ticket".into())))?;
        self.shared.put_once(&id, &sealed, self.ttl).await?;
        Ok(format!("wst_{}", hex::encode(raw)))
    }

    /// Takes a ticket out (it cannot be used twice); `None` when unknown, malformed or expired.
    pub async fn redeem(&self, ticket: &str) -> Result<Option<String>, ApiError> {
        let Some(raw) = ticket
            .strip_prefix("wst_")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        let (id, key) = Self::keys(&raw)?;
        let Some(mut sealed) = self.shared.take(&id).await? else {
            return Ok(None);
        };
        let opened = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key([0u8; 12]),
                aead::Aad::empty(),
                &mut sealed,
            )
            .ok()
            .and_then(|plain| String::from_utf8(plain.to_vec()).ok());
        Ok(opened)
    }
}

/// `POST /api/chat/ws/ticket`.
#[utoipa::path(
    post,
    path = "/api/chat/ws/ticket",
    tag = "chat",
    responses((status = 200, description = "A one-time ticket for the WebSocket handshake (30 s)", body = Object))
)]
pub async fn ticket(
    State(s): State<AppState>,
    Auth(_who): Auth,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = bearer(&headers).ok_or_else(|| ApiError::from(CoreError::unauthenticated()))?;
    let ticket = s.ws_tickets.issue(token).await?;
    Ok(Json(json!({
        "ticket": ticket,
        "expires_in": s.ws_tickets.ttl.as_secs(),
        "url": format!("/api/chat/ws?ticket={ticket}"),
    })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectQuery {
    ticket: Option<String>,
}

/// Whether a browser's `Origin` names this server (`https://` + the request's host).
fn same_origin(uri: &Uri, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Not a browser: nothing to forge across sites.
        return true;
    };
    let host = crate::routes::auth::request_host(uri, headers);
    !host.is_empty() && origin.to_str().ok() == Some(format!("https://{host}").as_str())
}

/// `GET /api/chat/ws?ticket=...`: the handshake.
#[utoipa::path(
    get,
    path = "/api/chat/ws",
    tag = "chat",
    params(ConnectQuery),
    responses((status = 101, description = "WebSocket: `message` frames in, `ChatStreamEvent` frames out")),
    security(())
)]
pub async fn connect(
    State(s): State<AppState>,
    Client(client): Client,
    uri: Uri,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ConnectQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            "this endpoint speaks WebSocket only; open it with a WebSocket client",
        )
    })?;
    if !same_origin(&uri, &headers) {
        return Err(ApiError::from(CoreError::denied(
            "origin_refused",
            "WebSocket connections are accepted only from this server's own origin",
        )));
    }
    let token = match q.ticket.as_deref() {
        Some(t) => s.ws_tickets.redeem(t).await?,
        None => None,
    };
    let token = token.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_ticket",
            "missing, used or expired WebSocket ticket; get one from POST /api/chat/ws/ticket",
        )
    })?;
    let who = usable_principal(&s, &token, &client).await?;
    let request_id = request_id(&headers);
    let limit = s.body_limit_bytes;
    // Small buffers: a chat socket carries short frames (tokens, a prompt), and tungstenite's
    // 128 KiB defaults would make each idle connection cost more than 100 kB. Longer frames
    // still arrive whole (the buffer grows up to `max_message_size`).
    Ok(upgrade
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            Session {
                socket,
                state: s,
                token,
                who,
                client,
                request_id,
                run: None,
            }
            .serve()
        }))
}

/// Authenticates `token` and refuses accounts that must first change their password or enrol 2FA
/// (the same rule as the HTTP routes).
async fn usable_principal(
    s: &AppState,
    token: &str,
    client: &ClientInfo,
) -> Result<Principal, ApiError> {
    let who = s.identity.authenticate(token, client).await?;
    if who.must_change_password {
        return Err(ApiError::from(CoreError::denied(
            "password_change_required",
            "change your password first (POST /api/auth/password)",
        )));
    }
    if who.needs_2fa_enrolment {
        return Err(ApiError::from(CoreError::denied(
            "mfa_enrolment_required",
            "your role requires two-factor authentication; enrol first",
        )));
    }
    Ok(who)
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Message(Box<NewMessage>),
    Stop,
    Ping,
    Auth { token: String },
}

#[derive(Debug, Deserialize)]
struct NewMessage {
    #[serde(alias = "message")]
    content: String,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    stop: Option<Vec<String>>,
    #[serde(default)]
    system_prompt: Option<String>,
}

fn error_event(e: &ApiError) -> Value {
    let mut v = json!({
        "type": "error",
        "code": e.code,
        // Spec 003's field name for the same code.
        "error_code": e.code,
        "message": e.message,
        "status": e.status.as_u16(),
    });
    if let Some(c) = &e.categories {
        v["categories"] = json!(c);
    }
    if let Some(r) = e.retry_after {
        v["retry_after"] = json!(r);
    }
    v
}

fn plain_error(code: &'static str, message: &str) -> Value {
    error_event(&ApiError::new(StatusCode::BAD_REQUEST, code, message))
}

struct Session {
    socket: WebSocket,
    state: AppState,
    token: String,
    who: Principal,
    client: ClientInfo,
    request_id: String,
    run: Option<ChatRun>,
}

/// What the loop does next.
enum Step {
    Go,
    Close,
}

impl Session {
    async fn send(&mut self, v: &Value) -> Step {
        let text = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
        match self.socket.send(Message::Text(text.into())).await {
            Ok(()) => Step::Go,
            Err(_) => Step::Close,
        }
    }

    async fn serve(mut self) {
        let _open = crate::telemetry::Open::websocket();
        let ready = json!({
            "type": "ready",
            "user_id": self.who.user_id.to_string(),
            "username": self.who.username,
        });
        if let Step::Close = self.send(&ready).await {
            return;
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                frame = self.socket.recv() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(frame)) => self.on_frame(frame).await,
                        // Closed or broken: dropping `run` cancels the generation.
                        _ => Step::Close,
                    }
                }
                ev = next_event(&mut self.run) => self.on_event(ev).await,
                _ = ping.tick() => {
                    if last_heard.elapsed() > IDLE_TIMEOUT {
                        let _ = self.socket.send(Message::Close(Some(CloseFrame {
                            code: 1001,
                            reason: "idle".into(),
                        }))).await;
                        Step::Close
                    } else if self.socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        Step::Close
                    } else {
                        Step::Go
                    }
                }
            };
            if let Step::Close = step {
                return;
            }
        }
    }

    async fn on_frame(&mut self, frame: Message) -> Step {
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(_) => return Step::Close,
            // Pings are answered by the library; pongs only prove the peer is alive.
            Message::Ping(_) | Message::Pong(_) => return Step::Go,
            Message::Binary(_) => {
                return self
                    .send(&plain_error(
                        "unsupported_frame",
                        "send JSON text frames, not binary ones",
                    ))
                    .await
            }
        };
        let msg: ClientMessage = match serde_json::from_str(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                // The parser's own text can quote the input; say where, not what.
                let what = format!(
                    "not a valid message at line {} column {}: expected a JSON object whose \
                     \"type\" is message, stop, auth or ping",
                    e.line(),
                    e.column()
                );
                return self.send(&plain_error("invalid_message", &what)).await;
            }
        };
        match msg {
            ClientMessage::Ping => self.send(&json!({"type": "pong"})).await,
            ClientMessage::Stop => {
                let was = self.run.take().is_some();
                self.send(&json!({"type": "stopped", "was_generating": was}))
                    .await
            }
            ClientMessage::Auth { token } => {
                match usable_principal(&self.state, &token, &self.client).await {
                    Ok(who) if who.user_id == self.who.user_id => {
                        self.token = token;
                        self.who = who;
                        self.send(&json!({"type": "authenticated"})).await
                    }
                    Ok(_) => {
                        self.send(&error_event(&ApiError::from(CoreError::denied(
                            "different_user",
                            "this socket belongs to another user; open a new one",
                        ))))
                        .await
                    }
                    Err(e) => self.send(&error_event(&e)).await,
                }
            }
            ClientMessage::Message(m) => self.start(*m).await,
        }
    }

    async fn start(&mut self, m: NewMessage) -> Step {
        if self.run.is_some() {
            return self
                .send(&error_event(&ApiError::new(
                    StatusCode::CONFLICT,
                    "busy",
                    "an answer is still being generated; wait for it or send {\"type\":\"stop\"}",
                )))
                .await;
        }
        // The credential may have been revoked or expired since the socket opened.
        match usable_principal(&self.state, &self.token, &self.client).await {
            Ok(who) => self.who = who,
            Err(e) => return self.send(&error_event(&e)).await,
        }
        let input = ChatInput {
            message: m.content,
            session_id: m.session_id,
            model: m.model,
            sampling: SamplingInput {
                temperature: m.temperature,
                top_p: m.top_p,
                top_k: m.top_k,
                seed: m.seed,
                max_tokens: m.max_tokens,
                stop: m.stop,
            },
            request_id: self.request_id.clone(),
            system_prompt: m.system_prompt,
        };
        match self.state.chat.start(&self.who, input).await {
            Ok(run) => {
                let start = json!({
                    "type": "start",
                    "session_id": run.session_id.to_string(),
                    "user_message_id": run.user_message_id.to_string(),
                    "model": run.model,
                });
                self.run = Some(run);
                self.send(&start).await
            }
            Err(e) => self.send(&error_event(&ApiError::from(e))).await,
        }
    }

    async fn on_event(&mut self, ev: Option<ChatEvent>) -> Step {
        let out = match ev {
            Some(ChatEvent::Token(t)) => json!({"type": "token", "content": t}),
            Some(ChatEvent::Finished(m)) => {
                self.run = None;
                let created = millis_to_rfc3339(m.created_at);
                let m = message_json(*m);
                json!({
                    "type": "message",
                    "message_id": m.id,
                    "session_id": m.session_id,
                    "content": m.content,
                    "timestamp": created,
                    "metadata": m.metadata,
                })
            }
            Some(ChatEvent::Failed { error, .. }) => {
                self.run = None;
                error_event(&ApiError::from(error))
            }
            Some(ChatEvent::Blocked { categories, .. }) => {
                self.run = None;
                error_event(&ApiError::guard_blocked(categories))
            }
            None => {
                self.run = None;
                error_event(&ApiError::from(CoreError::Internal(
                    "chat ended without result".into(),
                )))
            }
        };
        self.send(&out).await
    }
}

/// The next event of the running generation; never resolves when nothing runs.
async fn next_event(run: &mut Option<ChatRun>) -> Option<ChatEvent> {
    match run {
        Some(r) => r.events.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tickets_are_single_use_random_sealed_and_expire() {
        let shared = Arc::new(palisade_core::shared::LocalShared::new());
        let t = WsTickets::new(shared.clone());
        let a = t.issue("token-a").await.unwrap_or_default();
        let b = t.issue("token-a").await.unwrap_or_default();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        // What the shared state holds is neither the ticket nor the token.
        let raw = <[u8; 32]>::try_from(hex::decode(&a[4..]).unwrap_or_default()).unwrap_or([0; 32]);
        let id = WsTickets::keys(&raw).map(|k| k.0).unwrap_or_default();
        assert!(!id.contains(&a[4..]));
        let stored = shared.take(&id).await.ok().flatten().unwrap_or_default();
        assert!(!stored.windows(7).any(|w| w == b"token-a"));
        shared
            .put_once(&id, &stored, Duration::from_secs(5))
            .await
            .unwrap_or_default();
        assert_eq!(
            t.redeem(&a).await.ok().flatten().as_deref(),
            Some("token-a")
        );
        assert_eq!(t.redeem(&a).await.ok().flatten(), None, "second use");
        assert_eq!(t.redeem("wst_unknown").await.ok().flatten(), None);
        assert_eq!(
            t.redeem(&format!("wst_{}", "0".repeat(64)))
                .await
                .ok()
                .flatten(),
            None
        );
        assert_eq!(
            t.redeem(&b).await.ok().flatten().as_deref(),
            Some("token-a")
        );

        let short = WsTickets::with_ttl(shared, Duration::from_millis(0));
        let c = short.issue("token-c").await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(short.redeem(&c).await.ok().flatten(), None, "expired");
    }
}
