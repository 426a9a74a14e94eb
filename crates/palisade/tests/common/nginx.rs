//! Debian's nginx in front of test servers, with the shipped site configuration
//! (`deploy/nginx/palisade.conf`) rewritten for loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is not installed (scripts/setup --test installs it)")
}

/// nginx, stopped when dropped.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The shipped site configuration with loopback addresses (one `server` line per upstream) and the server's own certificate.
pub fn site(upstreams: &[&str], port: u16, http_port: u16, tls: &Path) -> String {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/palisade.conf"),
    )
    .unwrap();
    let cert = tls.join("cert.pem").display().to_string();
    let key = tls.join("key.pem").display().to_string();
    let mut out = String::new();
    for line in template.lines() {
        let t = line.trim_start();
        let replaced = if t.ends_with("# PALISADE_UPSTREAM") {
            upstreams
                .iter()
                .map(|u| format!("    server {u} max_fails=1 fail_timeout=5s;"))
                .collect::<Vec<_>>()
                .join("\n")
        } else if t.starts_with("listen [::]") {
            continue;
        } else if t == "listen 80;" {
            format!("    listen 127.0.0.1:{http_port};")
        } else if t.ends_with("# PALISADE_LISTEN") {
            format!("    listen 127.0.0.1:{port} ssl http2;")
        } else if t.ends_with("# PALISADE_CERT") {
            format!("    ssl_certificate {cert};")
        } else if t.ends_with("# PALISADE_KEY") {
            format!("    ssl_certificate_key {key};")
        } else if t.ends_with("# PALISADE_UPSTREAM_CA") {
            format!("    proxy_ssl_trusted_certificate {cert};")
        } else {
            line.to_string()
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    out
}

pub fn start_nginx(site_conf: &str, port: u16) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("palisade.conf"), site_conf).unwrap();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let main = format!(
        "daemon off;\n{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp/body;\n\
           proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
           uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
           include {d}/palisade.conf;\n}}\n",
        user = if root { "user root;\n" } else { "" },
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let check = Command::new(nginx_bin())
        .args(["-t", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(check.status.success(), "nginx -t failed:\n{said}");
    assert!(said.contains("syntax is ok"), "{said}");
    let child = Command::new(nginx_bin())
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let n = Nginx { child, dir };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not listen: {}",
            n.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}
