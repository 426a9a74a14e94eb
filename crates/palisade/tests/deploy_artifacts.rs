//! The deployment files of `deploy/` are checked by the tools that read them: the systemd unit
//! by `systemd-analyze verify` (pointing at the binary under test), the Dockerfile's runtime
//! stage for a non-root user and no secret baked in. (nginx's file is served live in
//! `nginx_e2e`; the Grafana dashboard's queries are checked against a live scrape in
//! `metrics_e2e`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .join(file),
    )
    .unwrap()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = deploy("systemd/palisade.service");
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=palisade",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/palisade", env!("CARGO_BIN_EXE_palisade")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (scripts/setup --test installs systemd)");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        !said.contains("palisade.service"),
        "systemd-analyze found problems in the unit:\n{said}"
    );
}

#[test]
fn the_image_runs_as_a_user_and_carries_no_secret() {
    let docker = deploy("docker/Dockerfile");
    let runtime = docker.rsplit("\nFROM ").next().unwrap();
    assert!(runtime.starts_with("debian:"), "{runtime}");
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line in the runtime stage");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "{user}"
    );
    for secret in ["API_KEY=", "PASSWORD=", "MASTER_KEY", "SECRET="] {
        assert!(!docker.contains(secret), "the image bakes in {secret}");
    }
    assert!(docker.contains("HEALTHCHECK"));
    assert!(docker.contains("--locked"));
}
