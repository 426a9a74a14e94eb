//! `palisade chat`: the interactive REPL (reedline) and the one-shot mode for scripts.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use futures::StreamExt;
use reedline::{
    default_emacs_keybindings, ColumnarMenu, DefaultCompleter, DefaultPrompt, DefaultPromptSegment,
    Emacs, FileBackedHistory, KeyCode, KeyModifiers, MenuBuilder, Reedline, ReedlineEvent,
    ReedlineMenu, Signal,
};
use reqwest::Method;
use serde_json::{json, Value};

use super::render::{sanitize, Renderer};
use super::{ensure_signed_in, exit, ApiFailure, Conn};
use crate::cli::ChatArgs;

const COMMANDS: &[(&str, &str)] = &[
    ("help", "this list"),
    ("status", "server, account, model and conversation"),
    ("models", "the models you may use"),
    ("model [NAME]", "show the model, or switch to NAME"),
    ("sessions", "your conversations, numbered"),
    ("open N", "continue conversation N of `sessions`"),
    ("rename TITLE", "rename the current conversation"),
    (
        "system [TEXT|off]",
        "show, set or drop the conversation's system prompt",
    ),
    (
        "delete [N]",
        "delete the current conversation (or N of `sessions`)",
    ),
    ("clear", "start a new conversation (also `new`)"),
    ("logout", "sign out here and end the session on the server"),
    ("exit", "leave (also `quit`, Ctrl-D, or Ctrl-C twice)"),
];

/// What one answer came to.
struct Answer {
    content: String,
    end: Option<Value>,
    session_id: Option<String>,
    stopped: bool,
}

struct Chat {
    conn: Conn,
    session: Option<String>,
    model: Option<String>,
    max_tokens: Option<u32>,
    /// The conversation's system prompt (for a new conversation: sent with its first message).
    system: Option<String>,
    /// Ids, titles and system prompts of the last `sessions` listing, for `open N` /
    /// `delete N`.
    listed: Vec<(String, String, Option<String>)>,
    tty: bool,
}

/// A directory removed when the run ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the whole server in this process on a loopback port and signs in as its local user.
async fn embedded(args: &ChatArgs) -> anyhow::Result<(Conn, Option<TempDir>)> {
    use rand::RngCore;
    let (dir, temp, memory) = match &args.client.data_dir {
        Some(d) => (d.clone(), None, false),
        None => {
            let mut b = [0u8; 8];
            rand::rngs::OsRng.fill_bytes(&mut b);
            let d = std::env::temp_dir().join(format!(
                "palisade-embedded-{}-{}",
                std::process::id(),
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ));
            (d.clone(), Some(TempDir(d)), true)
        }
    };
    let common = crate::cli::CommonArgs {
        config: args.config.clone(),
        data_dir: Some(dir),
        db_backend: args.db_backend,
    };
    let cfg = crate::app::load_config(&common, Some("127.0.0.1:0".into()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(crate::app::serve_with(
        cfg,
        Some(crate::app::EmbeddedRun { memory, ready: tx }),
    ));
    let info = match rx.await {
        Ok(i) => i,
        Err(_) => {
            // The server ended before it listened: its error says why.
            return Err(match server.await {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("the embedded server did not start"),
            });
        }
    };
    let mut conn = Conn::new(&crate::cli::ClientArgs {
        server: info.url,
        ca_cert: None,
        data_dir: Some(info.data_dir),
    })?;
    conn.ephemeral();
    conn.login(&info.username, &info.password, || {
        anyhow::bail!("the embedded user has no second factor")
    })
    .await?;
    if memory {
        eprintln!("embedded mode: conversations are kept in memory for this run only (--data-dir DIR keeps them)");
    }
    Ok((conn, temp))
}

/// Entry point of `palisade chat`; returns the process exit code.
pub async fn run(args: ChatArgs) -> anyhow::Result<i32> {
    let (mut conn, _temp) = if args.embedded {
        embedded(&args).await?
    } else {
        (Conn::new(&args.client)?, None)
    };
    let one_shot = args.message.is_some() || !std::io::stdin().is_terminal();
    if one_shot {
        let question = match &args.message {
            Some(m) => m.clone(),
            None => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            }
        };
        if question.trim().is_empty() {
            eprintln!("error: no question (give -m TEXT or pipe it on standard input)");
            return Ok(exit::ERROR);
        }
        if !conn.signed_in() {
            eprintln!(
                "error: not signed in to {}: run `palisade chat` once interactively, or set PALISADE_API_KEY",
                conn.base
            );
            return Ok(exit::AUTH);
        }
        let mut chat = Chat::new(conn, &args);
        return chat.one_shot(question.trim(), args.json).await;
    }
    ensure_signed_in(&mut conn, args.username.as_deref()).await?;
    let mut chat = Chat::new(conn, &args);
    tokio::task::block_in_place(|| chat.repl())
}

fn editor() -> Reedline {
    let names: Vec<String> = COMMANDS
        .iter()
        .map(|(c, _)| c.split(' ').next().unwrap_or(c).to_string())
        .chain(["quit".to_string(), "new".to_string()])
        .collect();
    let mut completer = DefaultCompleter::with_inclusions(&['-', '_']);
    completer.insert(names);
    let menu = Box::new(ColumnarMenu::default().with_name("completion_menu"));
    let mut keys = default_emacs_keybindings();
    keys.add_binding(
        KeyModifiers::NONE,
        KeyCode::Tab,
        ReedlineEvent::UntilFound(vec![
            ReedlineEvent::Menu("completion_menu".to_string()),
            ReedlineEvent::MenuNext,
        ]),
    );
    let mut ed = Reedline::create()
        .with_completer(Box::new(completer))
        .with_menu(ReedlineMenu::EngineCompleter(menu))
        .with_edit_mode(Box::new(Emacs::new(keys)));
    if let Some(dir) = dirs::config_dir().map(|d| d.join("palisade")) {
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(h) = FileBackedHistory::with_file(1000, dir.join("history.txt")) {
            ed = ed.with_history(Box::new(h));
        }
    }
    ed
}

impl Chat {
    fn new(conn: Conn, args: &ChatArgs) -> Chat {
        Chat {
            conn,
            session: args.session.clone(),
            model: args.model.clone(),
            max_tokens: args.max_tokens,
            system: None,
            listed: Vec::new(),
            tty: std::io::stdout().is_terminal(),
        }
    }

    fn repl(&mut self) -> anyhow::Result<i32> {
        let rt = tokio::runtime::Handle::current();
        let mut ed = editor();
        let prompt = DefaultPrompt::new(
            DefaultPromptSegment::Basic("palisade".into()),
            DefaultPromptSegment::Empty,
        );
        if let Ok(me) = rt.block_on(self.conn.get("/api/auth/me")) {
            println!(
                "Signed in to {} as {} ({}). Type `help` for commands, `exit` to leave.",
                self.conn.base,
                me["username"].as_str().unwrap_or("?"),
                me["role"].as_str().unwrap_or("?")
            );
        }
        let mut ctrl_c_once = false;
        loop {
            let sig = match ed.read_line(&prompt) {
                Ok(s) => s,
                Err(e) => anyhow::bail!("terminal: {e}"),
            };
            let line = match sig {
                Signal::Success(l) => {
                    ctrl_c_once = false;
                    l
                }
                Signal::CtrlC => {
                    if ctrl_c_once {
                        return Ok(exit::OK);
                    }
                    ctrl_c_once = true;
                    println!("(press Ctrl-C again or Ctrl-D to leave)");
                    continue;
                }
                Signal::CtrlD => return Ok(exit::OK),
                #[allow(unreachable_patterns)]
                _ => continue,
            };
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            match rt.block_on(self.handle(text)) {
                Ok(true) => {}
                Ok(false) => return Ok(exit::OK),
                Err(e) => println!("{}", paint_error(&e.to_string())),
            }
        }
    }

    /// One line of the REPL: a command or a message. `Ok(false)` to leave.
    async fn handle(&mut self, text: &str) -> anyhow::Result<bool> {
        // A leading backslash sends a line that looks like a command as a message.
        if let Some(msg) = text.strip_prefix('\\') {
            self.ask_interactive(msg).await?;
            return Ok(true);
        }
        let word_line = text.strip_prefix('/').unwrap_or(text);
        let (cmd, rest) = word_line
            .split_once(char::is_whitespace)
            .map_or((word_line, ""), |(c, r)| (c, r.trim()));
        match cmd.to_ascii_lowercase().as_str() {
            "help" | "?" => {
                println!("Commands (a line that starts with \\ is always sent as a message):");
                for (c, d) in COMMANDS {
                    println!("  {c:<18} {d}");
                }
            }
            "exit" | "quit" => return Ok(false),
            "status" => self.status().await?,
            "models" => self.models().await?,
            "model" => {
                if rest.is_empty() {
                    match &self.model {
                        Some(m) => println!("model: {m}"),
                        None => println!("model: the server's default (`models` lists them)"),
                    }
                } else {
                    let list = self.conn.get("/api/models").await?;
                    let known = list["models"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|m| m["name"] == rest);
                    if known {
                        self.model = Some(rest.to_string());
                        println!("model: {rest}");
                    } else {
                        println!(
                            "{}",
                            paint_error(&format!(
                                "no model `{rest}` you may use; `models` lists them"
                            ))
                        );
                    }
                }
            }
            "sessions" => self.sessions().await?,
            "open" => self.open(rest).await?,
            "rename" => {
                let Some(id) = self.session.clone() else {
                    println!("no conversation yet: ask something first");
                    return Ok(true);
                };
                if rest.is_empty() {
                    println!("usage: rename TITLE");
                } else {
                    self.conn
                        .call(
                            Method::PATCH,
                            &format!("/api/chat/sessions/{id}"),
                            Some(json!({"title": rest})),
                        )
                        .await?;
                    println!("renamed to “{}”", sanitize(rest));
                }
            }
            "system" => self.system_prompt(rest).await?,
            "delete" => {
                let id = if rest.is_empty() {
                    self.session.clone()
                } else {
                    self.pick(rest)
                };
                let Some(id) = id else {
                    println!("nothing to delete: no current conversation (or no such number)");
                    return Ok(true);
                };
                self.conn
                    .call(Method::DELETE, &format!("/api/chat/sessions/{id}"), None)
                    .await?;
                if self.session.as_deref() == Some(id.as_str()) {
                    self.session = None;
                    self.system = None;
                }
                println!("conversation deleted");
            }
            "clear" | "new" => {
                self.session = None;
                match &self.system {
                    Some(_) => println!(
                        "new conversation (with the same system prompt; `system off` drops it)"
                    ),
                    None => println!("new conversation"),
                }
            }
            "logout" => {
                self.conn.logout().await;
                println!("signed out");
                return Ok(false);
            }
            _ => self.ask_interactive(text).await?,
        }
        Ok(true)
    }

    fn pick(&self, n: &str) -> Option<String> {
        let i: usize = n.trim().parse().ok()?;
        self.listed
            .get(i.checked_sub(1)?)
            .map(|(id, _, _)| id.clone())
    }

    /// `system`: shows the conversation's system prompt; `system TEXT` sets it (at once for
    /// the current conversation, else for the next new one); `system off` drops it.
    async fn system_prompt(&mut self, rest: &str) -> anyhow::Result<()> {
        if rest.is_empty() {
            match &self.system {
                Some(s) => println!("system prompt: {}", sanitize(s)),
                None => println!("system prompt: the server's only (`system TEXT` sets one)"),
            }
            return Ok(());
        }
        let me = self.conn.get("/api/auth/me").await?;
        let allowed = me["permissions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p == "chat:system_prompt");
        if !allowed {
            println!(
                "{}",
                paint_error("your role may not set a system prompt (it needs chat:system_prompt)")
            );
            return Ok(());
        }
        let text = if rest.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(rest.to_string())
        };
        if let Some(id) = &self.session {
            self.conn
                .call(
                    Method::PATCH,
                    &format!("/api/chat/sessions/{id}"),
                    Some(json!({"system_prompt": text.clone().unwrap_or_default()})),
                )
                .await?;
        }
        let when = if self.session.is_some() {
            "this conversation"
        } else {
            "the next conversation"
        };
        match &text {
            Some(_) => println!("system prompt set for {when}"),
            None => println!("system prompt dropped for {when}"),
        }
        self.system = text;
        Ok(())
    }

    async fn status(&mut self) -> anyhow::Result<()> {
        let me = self.conn.get("/api/auth/me").await?;
        let health = self.conn.get("/readyz").await.ok();
        println!("server:       {}", self.conn.base);
        if let Some(h) = health {
            println!(
                "ready:        {}",
                h["status"].as_str().unwrap_or("unknown")
            );
        }
        println!(
            "signed in as: {} (role {}, tenant {}){}",
            me["username"].as_str().unwrap_or("?"),
            me["role"].as_str().unwrap_or("?"),
            me["tenant_id"].as_str().unwrap_or("?"),
            if self.conn.uses_api_key() {
                ", with an API key"
            } else {
                ""
            }
        );
        println!(
            "two-factor:   {}",
            if me["totp_enabled"] == true {
                "on"
            } else {
                "off"
            }
        );
        println!(
            "model:        {}",
            self.model.as_deref().unwrap_or("server default")
        );
        match &self.session {
            Some(s) => println!("conversation: {s}"),
            None => println!("conversation: new"),
        }
        if let Some(sp) = &self.system {
            println!("system prompt: {}", sanitize(sp));
        }
        if let Ok(u) = self.conn.get("/api/usage").await {
            let t = &u["today"];
            println!(
                "today:        {} requests, {} tokens ({} in, {} out), {:.1} s compute{}",
                t["requests"],
                t["total_tokens"],
                t["prompt_tokens"],
                t["completion_tokens"],
                t["compute_seconds"].as_f64().unwrap_or(0.0),
                match t["guard_blocks"].as_u64() {
                    Some(n) if n > 0 => format!(", {n} blocked by the guard"),
                    _ => String::new(),
                }
            );
            let limits = u["limits"].as_array().cloned().unwrap_or_default();
            if limits.is_empty() {
                println!("limits:       none");
            }
            for (i, l) in limits.iter().enumerate() {
                let reset = match l["reset_seconds"].as_u64() {
                    Some(0) | None => String::new(),
                    Some(s) => format!(", full again in {}", human_secs(s)),
                };
                println!(
                    "{:<14}{} left of {} ({}){reset}",
                    if i == 0 { "limits:" } else { "" },
                    l["remaining"],
                    l["limit"],
                    sanitize(l["name"].as_str().unwrap_or("?")),
                );
            }
        }
        Ok(())
    }

    async fn models(&mut self) -> anyhow::Result<()> {
        let v = self.conn.get("/api/models").await?;
        for m in v["models"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or("?");
            let mark = if Some(name) == self.model.as_deref()
                || (self.model.is_none() && m["default"] == true)
            {
                "*"
            } else {
                " "
            };
            println!(
                "{mark} {name:<24} {}",
                sanitize(m["description"].as_str().unwrap_or(""))
            );
        }
        Ok(())
    }

    async fn sessions(&mut self) -> anyhow::Result<()> {
        let v = self.conn.get("/api/chat/sessions?limit=20").await?;
        self.listed.clear();
        let rows = v["sessions"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            println!("no conversations yet");
        }
        for (i, s) in rows.iter().enumerate() {
            let id = s["id"].as_str().unwrap_or("").to_string();
            let title = sanitize(s["title"].as_str().unwrap_or(""));
            let current = if self.session.as_deref() == Some(id.as_str()) {
                "*"
            } else {
                " "
            };
            println!(
                "{current}{:>3}. {title}  ({} messages, {})",
                i + 1,
                s["message_count"],
                s["updated_at"]
                    .as_str()
                    .unwrap_or("")
                    .get(..16)
                    .unwrap_or("")
            );
            let system = s["system_prompt"].as_str().map(String::from);
            self.listed.push((id, title, system));
        }
        Ok(())
    }

    async fn open(&mut self, n: &str) -> anyhow::Result<()> {
        let Some(id) = self.pick(n) else {
            println!("usage: open N (a number from `sessions`)");
            return Ok(());
        };
        let v = self
            .conn
            .get(&format!("/api/chat/sessions/{id}/messages?limit=6"))
            .await?;
        self.session = Some(id);
        let (title, system) = self
            .listed
            .iter()
            .find(|(i, _, _)| Some(i) == self.session.as_ref())
            .map(|(_, t, s)| (t.clone(), s.clone()))
            .unwrap_or_default();
        self.system = system;
        println!("── {title} ──");
        let mut r = Renderer::new(!self.tty);
        for m in v["messages"].as_array().into_iter().flatten() {
            let who = if m["role"] == "user" {
                "you"
            } else {
                "assistant"
            };
            println!("{who}:");
            for line in m["content"].as_str().unwrap_or("").lines() {
                println!("{}", r.line(line));
            }
        }
        Ok(())
    }

    fn body(&self, text: &str) -> Value {
        let mut b = json!({"message": text, "stream": true});
        match (&self.session, &self.system) {
            (Some(s), _) => b["session_id"] = json!(s),
            // A new conversation starts with its system prompt.
            (None, Some(sp)) => b["system_prompt"] = json!(sp),
            (None, None) => {}
        }
        if let Some(m) = &self.model {
            b["model"] = json!(m);
        }
        if let Some(t) = self.max_tokens {
            b["max_tokens"] = json!(t);
        }
        b
    }

    /// Streams one answer to the terminal: a spinner until the first token, then the text as it
    /// arrives, each finished line re-drawn with markdown styles. Ctrl-C stops it (the server
    /// stops generating when the stream closes).
    async fn stream(&mut self, text: &str, show: bool) -> Result<Answer, ApiFailure> {
        let body = self.body(text);
        let spinner = (show && self.tty).then(|| {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_message("thinking…");
            pb.enable_steady_tick(Duration::from_millis(100));
            pb
        });
        let mut answer = Answer {
            content: String::new(),
            end: None,
            session_id: None,
            stopped: false,
        };
        // Ctrl-C stops the answer from the moment it is asked for, before its first event too.
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let events = tokio::select! {
            events = self.conn.stream_chat(body) => events,
            _ = &mut ctrl_c => {
                if let Some(pb) = &spinner {
                    pb.finish_and_clear();
                }
                answer.stopped = true;
                return Ok(answer);
            }
        };
        let mut events = match events {
            Ok(e) => e,
            Err(f) => {
                if let Some(pb) = &spinner {
                    pb.finish_and_clear();
                }
                return Err(f);
            }
        };
        let mut renderer = Renderer::new(!self.tty);
        let mut line = String::new();
        let width = crossterm::terminal::size()
            .map(|(w, _)| usize::from(w.max(20)))
            .unwrap_or(80);
        let mut out = std::io::stdout();
        let mut spinner = spinner;
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = &mut ctrl_c => {
                    answer.stopped = true;
                    break;
                }
            };
            let Some(ev) = ev else { break };
            let ev = match ev {
                Ok(v) => v,
                Err(f) => {
                    if let Some(pb) = spinner.take() {
                        pb.finish_and_clear();
                    }
                    return Err(f);
                }
            };
            match ev["type"].as_str() {
                Some("start") => {
                    answer.session_id = ev["session_id"].as_str().map(String::from);
                }
                Some("token") => {
                    if let Some(pb) = spinner.take() {
                        pb.finish_and_clear();
                    }
                    let t = ev["content"].as_str().unwrap_or("");
                    answer.content.push_str(t);
                    if show {
                        for (i, part) in t.split('\n').enumerate() {
                            if i > 0 {
                                // A line is complete: replace its raw text with the styled one.
                                if self.tty {
                                    redraw(&mut out, &line, width, &mut renderer);
                                }
                                let _ = writeln!(out);
                                line.clear();
                            }
                            let clean = sanitize(part);
                            line.push_str(&clean);
                            let _ = write!(out, "{clean}");
                        }
                        let _ = out.flush();
                    }
                }
                Some("end") => {
                    answer.end = Some(ev);
                    break;
                }
                Some("error") => {
                    if let Some(pb) = spinner.take() {
                        pb.finish_and_clear();
                    }
                    if show && !line.is_empty() {
                        println!();
                    }
                    return Err(ApiFailure {
                        status: ev["code"]
                            .as_str()
                            .filter(|c| *c == "guard_blocked")
                            .map(|_| reqwest::StatusCode::UNPROCESSABLE_ENTITY),
                        code: ev["code"].as_str().unwrap_or("error").to_string(),
                        message: ev["message"]
                            .as_str()
                            .unwrap_or("the answer failed")
                            .to_string(),
                        retry_after: None,
                        categories: super::categories(&ev["categories"]),
                    });
                }
                _ => {}
            }
        }
        if let Some(pb) = spinner.take() {
            pb.finish_and_clear();
        }
        if show {
            if self.tty && !line.is_empty() {
                redraw(&mut out, &line, width, &mut renderer);
            }
            let _ = writeln!(out);
        }
        // Dropping the stream closes the connection: the server stops and stores the partial
        // answer.
        drop(events);
        if let Some(s) = &answer.session_id {
            self.session = Some(s.clone());
        }
        Ok(answer)
    }

    async fn ask_interactive(&mut self, text: &str) -> anyhow::Result<()> {
        match self.stream(text, true).await {
            Ok(a) if a.stopped => println!("{}", paint_dim("[stopped]")),
            Ok(a) => {
                if let Some(end) = &a.end {
                    let m = &end["metadata"];
                    println!(
                        "{}",
                        paint_dim(&format!(
                            "{} · {} tokens · {:.2} s{}",
                            m["model"].as_str().unwrap_or("?"),
                            m["tokens_used"],
                            m["response_time_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                            if m["finish_reason"] == "length" {
                                " · cut at max_tokens"
                            } else {
                                ""
                            }
                        ))
                    );
                }
            }
            Err(f) => println!("{}", paint_error(&f.to_string())),
        }
        Ok(())
    }

    async fn one_shot(&mut self, question: &str, as_json: bool) -> anyhow::Result<i32> {
        match self.stream(question, !as_json).await {
            Ok(a) if a.stopped => {
                eprintln!("stopped");
                Ok(130)
            }
            Ok(a) => {
                if as_json {
                    let m = a
                        .end
                        .as_ref()
                        .map(|e| e["metadata"].clone())
                        .unwrap_or_default();
                    let out = json!({
                        "content": a.content,
                        "session_id": a.session_id,
                        "message_id": a.end.as_ref().and_then(|e| e["message_id"].as_str()),
                        "model": m["model"],
                        "prompt_tokens": m["prompt_tokens"],
                        "completion_tokens": m["completion_tokens"],
                        "latency_ms": m["response_time_ms"],
                        "finish_reason": m["finish_reason"],
                    });
                    println!("{out}");
                }
                Ok(exit::OK)
            }
            Err(f) => {
                if as_json {
                    println!(
                        "{}",
                        json!({"error": {"code": f.code, "message": f.to_string(),
                                         "status": f.status.map(|s| s.as_u16()),
                                         "categories": f.categories}})
                    );
                } else {
                    eprintln!("error: {f}");
                }
                Ok(f.exit_code())
            }
        }
    }
}

/// Replaces the raw text of the line just printed (`rows` terminal rows of `width`) with its
/// styled form; the cursor stays at its end.
fn redraw(out: &mut impl Write, line: &str, width: usize, renderer: &mut Renderer) {
    let rows = line.chars().count().max(1).div_ceil(width);
    if rows > 1 {
        let _ = write!(out, "\x1b[{}A", rows - 1);
    }
    let _ = write!(out, "\r\x1b[J{}", renderer.line(line));
}

fn paint_error(s: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[31m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn paint_dim(s: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[2m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// `42 s`, `5 min`, `3 h 20 min`, `2 d 4 h`.
fn human_secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}
