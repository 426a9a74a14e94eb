//! The audit trail's copies outside the database (`[audit] stdout`, `[audit.file]`): every
//! committed event as one JSON line, the same line `palisade audit export` writes. The file
//! rotates by size and age; rotated files are compressed with gzip in the background and the
//! oldest beyond `keep` are removed.
//!
//! A write error (disk full, file removed from under us, permissions) is returned to the store,
//! which tells every request waiting for that batch: with `audit.fail_closed` those requests are
//! refused. The next batch tries again (the file is reopened), so the sink heals by itself.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use palisade_config::AuditFileConfig;
use palisade_core::audit::{AuditLink, AuditMirror};
use serde_json::Value;

/// One event as a JSON object: the stored link, with its facts as JSON rather than their
/// stored text (`detail` re-serialised by serde_json is that text again, so a line can be
/// checked against its hash).
pub fn export_line(link: &AuditLink) -> Value {
    let mut v = serde_json::to_value(link).unwrap_or(Value::Null);
    v["detail"] = serde_json::from_str(&link.detail).unwrap_or(Value::Null);
    v
}

fn lines(links: &[AuditLink]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(links.len() * 512);
    for l in links {
        buf.extend_from_slice(export_line(l).to_string().as_bytes());
        buf.push(b'\n');
    }
    buf
}

/// Attaches the configured file and stdout sinks to the store; says which sinks are on (for
/// the start-up banner).
pub fn attach(
    cfg: &palisade_config::Config,
    store: &palisade_store::Store,
) -> anyhow::Result<String> {
    let mut sinks: Vec<Arc<dyn AuditMirror>> = Vec::new();
    let mut shown = vec!["database".to_string()];
    if let Some(p) = &cfg.audit.file.path {
        let path = if p.is_absolute() {
            p.clone()
        } else {
            cfg.data_dir.join(p)
        };
        let sink = FileSink::open(path.clone(), cfg.audit.file.clone())
            .map_err(|e| anyhow::anyhow!("opening the audit file {}: {e}", path.display()))?;
        shown.push(format!("file {}", path.display()));
        sinks.push(Arc::new(sink));
    }
    if cfg.audit.stdout {
        shown.push("stdout".into());
        sinks.push(Arc::new(StdoutSink));
    }
    if !sinks.is_empty() {
        store.set_audit_mirror(Arc::new(Mirrors(sinks)));
    }
    Ok(shown.join(", "))
}

/// Several mirrors written in turn; the first error fails the batch.
pub struct Mirrors(pub Vec<Arc<dyn AuditMirror>>);

impl AuditMirror for Mirrors {
    fn write(&self, links: &[AuditLink]) -> Result<(), String> {
        for m in &self.0 {
            m.write(links)?;
        }
        Ok(())
    }
}

/// Standard output, for log shippers (the server's own logs go to standard error).
pub struct StdoutSink;

impl AuditMirror for StdoutSink {
    fn write(&self, links: &[AuditLink]) -> Result<(), String> {
        let mut out = std::io::stdout().lock();
        out.write_all(&lines(links))
            .and_then(|()| out.flush())
            .map_err(|e| format!("standard output: {e}"))
    }
}

/// The JSON-lines file sink.
pub struct FileSink {
    path: PathBuf,
    cfg: AuditFileConfig,
    state: Mutex<Open>,
}

struct Open {
    /// `None` after a failure: the next write reopens.
    file: Option<File>,
    size: u64,
    since: SystemTime,
}

impl FileSink {
    /// Opens (creating) `path` for appending; its directory is created owner-only.
    pub fn open(path: PathBuf, cfg: AuditFileConfig) -> std::io::Result<FileSink> {
        let sink = FileSink {
            path,
            cfg,
            state: Mutex::new(Open {
                file: None,
                size: 0,
                since: SystemTime::now(),
            }),
        };
        {
            let mut st = sink
                .state
                .lock()
                .map_err(|_| std::io::Error::other("audit file lock poisoned"))?;
            sink.reopen(&mut st)?;
        }
        Ok(sink)
    }

    fn reopen(&self, st: &mut Open) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                }
            }
        }
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(&self.path)?;
        let meta = file.metadata()?;
        st.size = meta.len();
        // A file that already holds events is as old as its creation (or last change).
        st.since = if st.size == 0 {
            SystemTime::now()
        } else {
            meta.created()
                .or_else(|_| meta.modified())
                .unwrap_or_else(|_| SystemTime::now())
        };
        st.file = Some(file);
        Ok(())
    }

    fn due(&self, st: &Open, incoming: u64, now: SystemTime) -> bool {
        if st.size == 0 {
            return false;
        }
        let too_big = st.size + incoming > self.cfg.max_bytes;
        let too_old = self.cfg.rotate_every_secs > 0
            && now
                .duration_since(st.since)
                .unwrap_or(Duration::ZERO)
                .as_secs()
                >= self.cfg.rotate_every_secs;
        too_big || too_old
    }

    /// Moves the current file aside under a time-stamped name, opens a fresh one, and
    /// compresses and prunes the rotated files in the background.
    fn rotate(&self, st: &mut Open, now: SystemTime) -> std::io::Result<()> {
        if let Some(f) = st.file.take() {
            f.sync_all()?;
        }
        let stamp = chrono::DateTime::<chrono::Utc>::from(now).format("%Y%m%dT%H%M%S%.3fZ");
        let rotated = self.sibling(&format!("{stamp}.jsonl"));
        std::fs::rename(&self.path, &rotated)?;
        self.reopen(st)?;
        let (compress, keep, me) = (self.cfg.compress, self.cfg.keep, self.clone_names());
        std::thread::spawn(move || {
            if compress {
                if let Err(e) = gzip(&rotated) {
                    tracing::error!(error = %e, file = %rotated.display(), "compressing a rotated audit file failed");
                }
            }
            if keep > 0 {
                if let Err(e) = me.prune(keep as usize) {
                    tracing::error!(error = %e, "removing old audit files failed");
                }
            }
        });
        Ok(())
    }

    /// `<stem>-<suffix>` beside the file.
    fn sibling(&self, suffix: &str) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit".into());
        self.path.with_file_name(format!("{stem}-{suffix}"))
    }

    fn clone_names(&self) -> Names {
        Names {
            path: self.path.clone(),
        }
    }
}

/// What the background pruning needs to know about the file.
struct Names {
    path: PathBuf,
}

impl Names {
    /// Rotated files (`<stem>-<UTC stamp>.jsonl[.gz]`), oldest first.
    fn rotated(&self) -> std::io::Result<Vec<PathBuf>> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit".into());
        let prefix = format!("{stem}-");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .is_some_and(|n| {
                        n.starts_with(&prefix)
                            && (n.ends_with(".jsonl") || n.ends_with(".jsonl.gz"))
                    })
            })
            .collect();
        // The stamps sort as time.
        found.sort();
        Ok(found)
    }

    fn prune(&self, keep: usize) -> std::io::Result<()> {
        let files = self.rotated()?;
        if files.len() > keep {
            for old in &files[..files.len() - keep] {
                std::fs::remove_file(old)?;
            }
        }
        Ok(())
    }
}

/// `f` → `f.gz` (written aside, then renamed), then `f` removed.
fn gzip(f: &Path) -> std::io::Result<()> {
    let mut gz_name = f.as_os_str().to_owned();
    gz_name.push(".gz");
    let gz = PathBuf::from(gz_name);
    let mut tmp_name = gz.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut input = File::open(f)?;
        let out = File::create(&tmp)?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.sync_all()?;
    }
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(f)
}

impl AuditMirror for FileSink {
    fn write(&self, links: &[AuditLink]) -> Result<(), String> {
        let buf = lines(links);
        let mut st = self
            .state
            .lock()
            .map_err(|_| "audit file lock poisoned".to_string())?;
        let shown = self.path.display().to_string();
        let now = SystemTime::now();
        if st.file.is_none() {
            self.reopen(&mut st)
                .map_err(|e| format!("opening {shown}: {e}"))?;
        }
        if self.due(&st, buf.len() as u64, now) {
            self.rotate(&mut st, now)
                .map_err(|e| format!("rotating {shown}: {e}"))?;
        }
        let file = st
            .file
            .as_mut()
            .ok_or_else(|| format!("{shown} is not open"))?;
        match file.write_all(&buf).and_then(|()| file.flush()) {
            Ok(()) => {
                st.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Reopen on the next batch (the file may have been removed or the disk freed).
                st.file = None;
                Err(format!("writing {shown}: {e}"))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::io::Read;

    fn link(seq: i64, detail: &str) -> AuditLink {
        AuditLink {
            chain: "platform".into(),
            chain_seq: seq,
            kind: "login_success".into(),
            tenant_id: None,
            user_id: Some("u".into()),
            actor_id: None,
            ip: Some("127.0.0.1".into()),
            user_agent: None,
            request_id: Some("r".into()),
            detail: detail.into(),
            created_at: 1,
            prev_hash: "p".into(),
            hash: "h".into(),
        }
    }

    fn cfg(max_bytes: u64, keep: u32, compress: bool) -> AuditFileConfig {
        AuditFileConfig {
            path: None,
            max_bytes,
            rotate_every_secs: 0,
            keep,
            compress,
        }
    }

    fn rotated(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("audit-"))
            .collect();
        v.sort();
        v
    }

    fn wait_for(mut ok: impl FnMut() -> bool) {
        for _ in 0..200 {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("condition not reached");
    }

    #[test]
    fn lines_carry_the_detail_as_json_and_its_text_hashes_back() {
        let l = link(1, r#"{"a":1,"b":[true,"x"]}"#);
        let v = export_line(&l);
        assert_eq!(v["detail"]["b"][1], "x");
        assert_eq!(v["detail"].to_string(), l.detail);
        assert_eq!(v["chain_seq"], 1);
    }

    #[test]
    fn rotates_by_size_compresses_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = FileSink::open(path.clone(), cfg(4096, 2, true)).unwrap();
        let detail = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1500));
        for i in 0..12 {
            sink.write(&[link(i, &detail)]).unwrap();
            // Distinct stamps for distinct rotations.
            std::thread::sleep(Duration::from_millis(5));
        }
        // Every line of the live file is whole JSON, and it stays under the limit.
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.len() as u64 <= 4096);
        for line in live.lines() {
            serde_json::from_str::<Value>(line).unwrap();
        }
        // Compression runs in the background; at most `keep` rotated files remain.
        wait_for(|| {
            let r = rotated(dir.path());
            r.len() == 2 && r.iter().all(|n| n.ends_with(".jsonl.gz"))
        });
        let newest = dir.path().join(rotated(dir.path()).pop().unwrap());
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(newest).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["kind"], "login_success");
    }

    #[test]
    fn rotates_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut c = cfg(1 << 20, 0, false);
        c.rotate_every_secs = 1;
        let sink = FileSink::open(path.clone(), c).unwrap();
        sink.write(&[link(1, "{}")]).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        sink.write(&[link(2, "{}")]).unwrap();
        let r = rotated(dir.path());
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].ends_with(".jsonl"));
        let live = std::fs::read_to_string(&path).unwrap();
        assert_eq!(live.lines().count(), 1);
        assert!(live.contains("\"chain_seq\":2"));
    }

    #[test]
    fn a_full_disk_is_an_error_and_the_sink_recovers() {
        // /dev/full accepts the open and refuses every write with ENOSPC.
        let sink = FileSink::open(PathBuf::from("/dev/full"), cfg(1 << 30, 0, false)).unwrap();
        let err = sink.write(&[link(1, "{}")]).unwrap_err();
        assert!(err.contains("/dev/full"), "{err}");
        // It is reopened and fails again, cleanly, rather than panicking or going silent.
        assert!(sink.write(&[link(2, "{}")]).is_err());
    }
}
