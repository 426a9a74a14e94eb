//! TLS to PostgreSQL (`sslmode=verify-full&sslrootcert=FILE` in `store.url`), against a real
//! server that accepts only TLS: the test starts its own PostgreSQL (the machine's binaries,
//! installed by `scripts/setup --test`) on a free loopback port with a certificate from a CA it
//! generates. The store migrates and works over TLS and the server says the session is
//! encrypted; a client that does not encrypt, that trusts another CA, or that expects another
//! name is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_core::ports::TenantRepository;
use palisade_store::{PgSettings, Store};
use sqlx::{AnyConnection, Connection};

/// The directory of the machine's PostgreSQL server binaries (`initdb`, `pg_ctl`).
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL's server binaries are missing: run scripts/setup --test (package postgresql)")
    })
}

/// A PostgreSQL of our own, TLS only; stopped when dropped.
struct TlsPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl TlsPostgres {
    /// Runs a server program as the `postgres` user when we are root (PostgreSQL refuses to
    /// run as root), directly otherwise.
    fn command(&self, program: &str) -> Command {
        as_server_user(&self.bin.join(program))
    }

    fn start() -> TlsPostgres {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let bin = server_bin();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Certificates: a CA, the server's (for 127.0.0.1 only) and an unrelated CA.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Palisade test database CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        let other_key = KeyPair::generate().unwrap();
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other_cert = other.self_signed(&other_key).unwrap();

        let tls = root.join("tls");
        std::fs::create_dir(&tls).unwrap();
        let write = |name: &str, content: &str, mode: u32| {
            let p = tls.join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let ca_path = write("ca.crt", &ca_cert.pem(), 0o644);
        let other_ca = write("other-ca.crt", &other_cert.pem(), 0o644);
        let cert = write("server.crt", &leaf_cert.pem(), 0o644);
        let key = write("server.key", &leaf_key.serialize_pem(), 0o600);

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = TlsPostgres {
            bin,
            port,
            ca: ca_path,
            other_ca,
            dir,
        };
        let root = pg.dir.path();
        give_to_server_user(root);
        let data = root.join("data");
        let out = pg
            .command("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
            ])
            .args(["--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            root.display(),
            cert.display(),
            key.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        // TCP only with TLS: no `host` line, so an unencrypted connection has no way in.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        give_to_server_user(root);
        let log = root.join("server.log");
        let out = pg
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()])
            .args(["-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        pg
    }

    fn url(&self, tls: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?{tls}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap_or_default(), "-m", "immediate"])
            .args(["-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The server (run as `postgres` when we are root) must own its directory and key.
fn give_to_server_user(root: &Path) {
    if is_root() {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

async fn connect(url: &str) -> Result<AnyConnection, String> {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_store_works_over_verified_tls_and_nothing_weaker_gets_in() {
    let pg = TlsPostgres::start();
    let verified = pg.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        pg.ca.display()
    ));
    // The store migrates, checks its role and works, all over TLS.
    let store = Store::open_postgres(&verified, &PgSettings::default())
        .await
        .unwrap();
    let tenant = store.create_tenant("tls-tenant").await.unwrap();
    assert!(store
        .list_tenants()
        .await
        .unwrap()
        .iter()
        .any(|t| t.id == tenant.id));
    // The server's own view of the session: encrypted.
    let mut c = connect(&verified).await.unwrap();
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(ssl);
    assert!(version.starts_with("TLSv1."), "{version}");

    // No TLS: the server has no door for it.
    let plain = connect(&pg.url("sslmode=disable")).await;
    assert!(plain.is_err(), "a plain connection got in");
    // TLS, but the certificate checked against another CA: refused by the client.
    let other = connect(&pg.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        pg.other_ca.display()
    )))
    .await;
    assert!(other.is_err(), "another CA was trusted");
    // The right CA but another name than the certificate's: refused too.
    let wrong_name = connect(&format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        pg.ca.display()
    ))
    .await;
    assert!(
        wrong_name.is_err(),
        "a name the certificate does not carry was accepted"
    );
    store.close().await;
}
