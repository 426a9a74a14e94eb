//! The deployment files of `deploy/` are checked by the tools that read them: the systemd unit
//! by `systemd-analyze verify` (pointing at the binary under test), the Dockerfile's runtime
//! stage for a non-root user and no secret baked in, the Helm chart by `helm lint --strict` and
//! its rendered manifests by the Kubernetes API's schemas (kubernetes-validate, strict), the
//! Compose file by the Compose Specification's schema, the nginx site Compose writes by
//! `nginx -t` with the certificates `make-compose-secrets` makes, and the environment both
//! give Palisade by `palisade config validate` (unknown `PALISADE_*` keys are refused). Helm,
//! kubernetes-validate and the schema come from `tests-fixtures/deploy/setup`. No Docker engine
//! or cluster runs here. (nginx's shipped file is served live in `nginx_e2e`; the Grafana
//! dashboard's queries are checked against a live scrape in `metrics_e2e`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

#[path = "common/nginx.rs"]
mod nginx;

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

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A finished command's status and output.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The venv of `tests-fixtures/deploy/setup`: Helm, kubernetes-validate, the Compose schema
/// (built by `scripts/setup --test`; the script returns at once when it is in place). Once per
/// test binary, so that parallel tests never build it twice.
fn deploy_venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let r = run(&mut Command::new(
            repo().join("tests-fixtures/deploy/setup"),
        ));
        assert!(r.ok, "tests-fixtures/deploy/setup failed:\n{}", r.stderr);
        PathBuf::from(r.stdout.trim())
    })
}

/// `helm template` of deploy/helm/palisade with these flags; every document is validated
/// against the Kubernetes 1.25 and 1.37 API schemas, strictly (unknown fields are errors).
fn render_chart(flags: &[&str]) -> Vec<Value> {
    let r = run(Command::new(deploy_venv().join("bin/python"))
        .current_dir(repo())
        .args([
            "tests-fixtures/deploy/check_chart.py",
            "deploy/helm/palisade",
        ])
        .args(["--k8s", "1.25.0", "--k8s", "1.37.0", "--"])
        .args(flags));
    assert!(
        r.ok,
        "the chart rendered with {flags:?} is not valid:\n{}",
        r.stderr
    );
    serde_json::from_str(&r.stdout).unwrap()
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
}

fn doc<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered: {:?}", kinds(docs)))
}

fn pod_spec(docs: &[Value]) -> &Value {
    &doc(docs, "Deployment")["spec"]["template"]["spec"]
}

fn env_names(container: &Value) -> Vec<&str> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

/// Non-root, read-only root, no privilege escalation, no capability, for every container; the
/// probes on /healthz and /readyz; secrets only by reference; no Secret made by the chart.
fn assert_hardened(docs: &[Value]) {
    let pod = pod_spec(docs);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"].as_i64(), Some(0));
    assert_eq!(pod["automountServiceAccountToken"], false);
    let init = pod["initContainers"].as_array().into_iter().flatten();
    for c in pod["containers"].as_array().unwrap().iter().chain(init) {
        let (name, sc) = (c["name"].as_str().unwrap(), &c["securityContext"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
    }
    let main = &pod["containers"][0];
    assert_eq!(main["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(main["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(main["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    for e in main["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if !["URL", "KEY", "TOKEN", "PASSWORD", "SECRET"]
            .iter()
            .any(|s| name.contains(s))
        {
            continue;
        }
        match e["value"].as_str() {
            Some(v) => assert!(
                v.starts_with("file::") || v.starts_with("/etc/palisade/tls/"),
                "{name}={v}: a secret must be a reference"
            ),
            None => assert!(e["valueFrom"]["secretKeyRef"]["key"].is_string(), "{e}"),
        }
    }
    assert!(!kinds(docs).contains(&"Secret"), "{:?}", kinds(docs));
    let text = serde_json::to_string(docs).unwrap();
    for literal in ["postgres://", "redis://", "rediss://", "PRIVATE KEY"] {
        assert!(!text.contains(literal), "the chart renders {literal:?}");
    }
}

fn egress_ports(policy: &Value) -> Vec<Value> {
    policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| p["port"].clone())
        .collect()
}

#[test]
fn the_helm_chart_lints_strictly() {
    let helm = deploy_venv().join("bin/helm");
    for values in [
        None,
        Some("tests-fixtures/deploy/values-all-on.yaml"),
        Some("tests-fixtures/deploy/values-model-volume.yaml"),
    ] {
        let mut cmd = Command::new(&helm);
        cmd.current_dir(repo())
            .args(["lint", "--strict", "deploy/helm/palisade"]);
        if let Some(v) = values {
            cmd.args(["-f", v]);
        }
        let r = run(&mut cmd);
        assert!(
            r.ok,
            "helm lint --strict ({values:?}):\n{}{}",
            r.stdout, r.stderr
        );
        assert!(r.stdout.contains("0 chart(s) failed"), "{}", r.stdout);
    }
}

#[test]
fn the_helm_chart_renders_valid_hardened_manifests() {
    // Defaults: two replicas with a disruption budget; no ingress, autoscaler or policy.
    let docs = render_chart(&[]);
    let k = kinds(&docs);
    for kind in ["ServiceAccount", "ConfigMap", "Service", "Deployment"] {
        assert!(k.contains(&kind), "{kind} missing: {k:?}");
    }
    for kind in ["Ingress", "HorizontalPodAutoscaler", "NetworkPolicy"] {
        assert!(!k.contains(&kind), "{kind} rendered by default: {k:?}");
    }
    assert_hardened(&docs);
    assert_eq!(
        doc(&docs, "Deployment")["spec"]["replicas"].as_i64(),
        Some(2)
    );
    let pdb = doc(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    let pod = pod_spec(&docs);
    let init: Vec<&str> = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["data-dir", "model-pull"]);
    let env = env_names(&pod["containers"][0]);
    for name in [
        "PALISADE_STORE__URL",
        "PALISADE_REDIS__URL",
        "PALISADE_CRYPTO__MASTER_KEY",
        "PALISADE_AUDIT__KEY",
        "PALISADE_METRICS__TOKEN",
    ] {
        assert!(env.contains(&name), "{name} missing: {env:?}");
    }

    // Everything on: ingress for SSE and WebSockets, autoscaler, network policy.
    let docs = render_chart(&["-f", "tests-fixtures/deploy/values-all-on.yaml"]);
    assert_hardened(&docs);
    let dep = doc(&docs, "Deployment");
    assert!(
        dep["spec"].get("replicas").is_none(),
        "the autoscaler owns it"
    );
    let hpa = doc(&docs, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        dep["metadata"]["name"]
    );
    assert_eq!(hpa["spec"]["minReplicas"].as_i64(), Some(3));
    assert_eq!(doc(&docs, "PodDisruptionBudget")["apiVersion"], "policy/v1");
    let ingress = doc(&docs, "Ingress");
    let notes = &ingress["metadata"]["annotations"];
    assert_eq!(notes["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    assert_eq!(
        notes["nginx.ingress.kubernetes.io/backend-protocol"],
        "HTTPS"
    );
    assert_eq!(
        notes["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
    let policy = doc(&docs, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let from: Vec<Value> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["ports"][0]["port"].clone())
        .collect();
    assert_eq!(from, [json!("https"), json!("metrics")]);
    let to = egress_ports(policy);
    for port in [
        json!(53),
        json!(5432),
        json!(6379),
        json!(443),
        json!(11434),
    ] {
        assert!(to.contains(&port), "no egress to {port}: {to:?}");
    }
    let main = &pod_spec(&docs)["containers"][0];
    assert!(main["image"].as_str().unwrap().contains("@sha256:"));
    assert!(env_names(main).contains(&"PALISADE_ADMIN_PASSWORD"));

    // The model from a claim, read-only: no download, so no egress to 443; one replica
    // without Redis or metrics, so no disruption budget.
    let docs = render_chart(&["-f", "tests-fixtures/deploy/values-model-volume.yaml"]);
    assert_hardened(&docs);
    assert!(!kinds(&docs).contains(&"PodDisruptionBudget"));
    let pod = pod_spec(&docs);
    let models = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "models")
        .unwrap();
    assert_eq!(
        models["persistentVolumeClaim"]["claimName"],
        "palisade-models"
    );
    assert_eq!(models["persistentVolumeClaim"]["readOnly"], true);
    assert_eq!(pod["initContainers"].as_array().unwrap().len(), 1);
    let env = env_names(&pod["containers"][0]);
    assert!(!env.contains(&"PALISADE_REDIS__URL"), "{env:?}");
    assert!(!env.contains(&"PALISADE_METRICS__LISTEN"), "{env:?}");
    let to = egress_ports(doc(&docs, "NetworkPolicy"));
    assert!(
        !to.contains(&json!(443)) && !to.contains(&json!(6379)),
        "{to:?}"
    );
}

#[test]
fn the_helm_chart_refuses_unsafe_values() {
    let helm = deploy_venv().join("bin/helm");
    for (flags, why) in [
        (
            &["--set", "securityContext.readOnlyRootFilesystem=false"][..],
            "readOnlyRootFilesystem",
        ),
        (
            &["--set", "podSecurityContext.runAsNonRoot=false"][..],
            "runAsNonRoot",
        ),
        (
            &["--set", "replicaCount=3", "--set", "secrets.keys.redisUrl="][..],
            "needs Redis",
        ),
        (&["--set", "model.source=volume"][..], "existingClaim"),
        (&["--set", "secrets.name="][..], "secrets.name"),
    ] {
        let r = run(Command::new(&helm)
            .current_dir(repo())
            .args(["template", "palisade", "deploy/helm/palisade"])
            .args(flags));
        assert!(!r.ok, "helm template {flags:?} rendered");
        assert!(r.stderr.contains(why), "{flags:?}: {}", r.stderr);
    }
}

/// deploy/compose.yaml checked against the Compose Specification's schema, with its
/// references resolved; the file as Compose reads it (anchors merged, defaults filled in).
fn compose() -> Value {
    let r = run(Command::new(deploy_venv().join("bin/python"))
        .current_dir(repo())
        .args([
            "tests-fixtures/deploy/check_compose.py",
            "deploy/compose.yaml",
        ]));
    assert!(
        r.ok,
        "deploy/compose.yaml is not a valid Compose file:\n{}",
        r.stderr
    );
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn the_compose_file_follows_the_compose_spec_and_holds_no_secret() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    // Two replicas of one image on PostgreSQL and Redis; the second starts once the first is
    // ready (it makes the signing keys and fetches the model into the shared volume).
    let (a, b) = (&c["services"]["palisade-1"], &c["services"]["palisade-2"]);
    for (name, svc) in [("palisade-1", a), ("palisade-2", b)] {
        assert_eq!(
            svc["build"]["dockerfile"], "deploy/docker/Dockerfile",
            "{name}"
        );
        assert_eq!(svc["image"], a["image"], "{name}");
        let env = &svc["environment"];
        assert_eq!(env["PALISADE_STORE__BACKEND"], "postgresql", "{name}");
        assert_eq!(
            env["PALISADE_STORE__URL"],
            "file::/run/secrets/database_url"
        );
        assert_eq!(env["PALISADE_REDIS__URL"], "file::/run/secrets/redis_url");
        for dep in ["postgres", "redis"] {
            assert_eq!(
                svc["depends_on"][dep]["condition"], "service_healthy",
                "{name}"
            );
        }
        assert_eq!(svc["read_only"], true, "{name}");
        assert_eq!(svc["cap_drop"], json!(["ALL"]), "{name}");
        assert!(svc["healthcheck"]["test"].to_string().contains("/readyz"));
        assert!(svc.get("profiles").is_none(), "{name}");
    }
    assert_eq!(
        b["depends_on"]["palisade-1"]["condition"],
        "service_healthy"
    );
    for name in ["postgres", "redis", "nginx"] {
        assert!(services.contains_key(name), "{name} missing");
        assert!(c["services"][name].get("profiles").is_none(), "{name}");
        assert!(c["services"][name]["healthcheck"].is_object(), "{name}");
    }
    // Ollama and monitoring only on request.
    assert_eq!(c["services"]["ollama"]["profiles"], json!(["ollama"]));
    for name in ["prometheus", "grafana"] {
        assert_eq!(
            c["services"][name]["profiles"],
            json!(["monitoring"]),
            "{name}"
        );
    }
    // nginx serves the shipped site, its marked lines filled in for both replicas.
    let nginx = &c["services"]["nginx"];
    let mounts: Vec<&str> = nginx["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./nginx/palisade.conf:")),
        "{mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./nginx/compose-site.sh:/docker-entrypoint.d/")),
        "{mounts:?}"
    );
    assert_eq!(
        nginx["environment"]["UPSTREAMS"],
        "palisade-1:8443 palisade-2:8443"
    );
    // Prometheus scrapes both replicas with the token; Grafana gets the dashboard.
    let prom = read(&repo().join("deploy/prometheus/prometheus.yml"));
    for line in [
        "palisade-1:9464",
        "palisade-2:9464",
        "/run/secrets/metrics_token",
    ] {
        assert!(prom.contains(line), "prometheus.yml lacks {line}");
    }
    assert!(c["services"]["grafana"]["volumes"]
        .to_string()
        .contains("./grafana/palisade-dashboard.json:"));
    // X-Forwarded-For is believed from the edge network only (nginx's).
    let subnet = c["networks"]["edge"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap();
    assert_eq!(
        a["environment"]["PALISADE_HTTP__TRUSTED_PROXIES"],
        format!("[\"{subnet}\"]")
    );
    assert_eq!(c["networks"]["backend"]["internal"], true);

    // No secret in the file: other images' passwords by *_FILE, Palisade's by references, every
    // Compose secret a file under secrets/, which deploy/.gitignore keeps out of git.
    for (name, svc) in services {
        for (k, v) in svc["environment"].as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            if k.contains("PASSWORD") {
                assert!(
                    k.ends_with("_FILE") && v.starts_with("/run/secrets/"),
                    "{name}: {k}"
                );
            }
            if k.starts_with("PALISADE_") && ["URL", "KEY", "TOKEN"].iter().any(|s| k.ends_with(s))
            {
                assert!(
                    v.starts_with("file::/run/secrets/") || v.starts_with("/run/secrets/"),
                    "{name}: {k}={v}"
                );
            }
        }
    }
    for (name, secret) in c["secrets"].as_object().unwrap() {
        let file = secret["file"].as_str().unwrap_or_default();
        assert!(file.starts_with("./secrets/"), "secret {name}: {secret}");
    }
    let raw = read(&repo().join("deploy/compose.yaml"));
    for literal in ["postgres://", "redis://", "PRIVATE KEY"] {
        assert!(!raw.contains(literal), "compose.yaml holds {literal:?}");
    }
    let ignored = read(&repo().join("deploy/.gitignore"));
    assert!(ignored.lines().any(|l| l == "/secrets/"), "{ignored}");
}

/// `deploy/make-compose-secrets DIR/secrets` (openssl comes with tests-fixtures/deploy/setup).
fn make_compose_secrets(dir: &Path) -> PathBuf {
    deploy_venv();
    let secrets = dir.join("secrets");
    let r = run(Command::new(repo().join("deploy/make-compose-secrets")).arg(&secrets));
    assert!(r.ok, "make-compose-secrets failed:\n{}", r.stderr);
    secrets
}

fn first_line(path: &Path) -> String {
    read(path).lines().next().unwrap_or_default().to_string()
}

#[test]
fn make_compose_secrets_makes_every_secret_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secrets = make_compose_secrets(dir.path());
    for (name, secret) in compose()["secrets"].as_object().unwrap() {
        let file = secret["file"]
            .as_str()
            .unwrap()
            .trim_start_matches("./secrets/");
        assert!(
            !read(&secrets.join(file)).trim().is_empty(),
            "{name}: {file} is empty"
        );
    }
    for key in ["master_key", "audit_key"] {
        let hex = first_line(&secrets.join(key));
        assert!(
            hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{key}"
        );
    }
    assert!(first_line(&secrets.join("metrics_token")).len() >= 16);
    let pw = first_line(&secrets.join("postgres_password"));
    assert_eq!(
        first_line(&secrets.join("database_url")),
        format!("postgres://palisade:{pw}@postgres:5432/palisade")
    );
    let redis_pw = first_line(&secrets.join("redis_conf"));
    let redis_pw = redis_pw.strip_prefix("requirepass ").unwrap();
    assert_eq!(
        first_line(&secrets.join("redis_url")),
        format!("redis://:{redis_pw}@redis:6379/0")
    );
    let mode = |p: &str| {
        std::fs::metadata(secrets.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("ca/ca-key.pem"), 0o600);
    // The replicas' certificate comes from the CA nginx trusts, with the names it asks for.
    let r = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(secrets.join("tls/upstream-ca.pem"))
        .arg(secrets.join("replica/cert.pem")));
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let r = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(secrets.join("replica/cert.pem")));
    for name in ["DNS:palisade,", "DNS:palisade-1,", "DNS:palisade-2"] {
        assert!(r.stdout.contains(name), "{name}: {}", r.stdout);
    }
    // A second run keeps what exists.
    let before = read(&secrets.join("master_key"));
    let r = run(Command::new(repo().join("deploy/make-compose-secrets")).arg(&secrets));
    assert!(r.ok && r.stderr.contains("nothing created"), "{}", r.stderr);
    assert_eq!(read(&secrets.join("master_key")), before);
}

#[test]
fn compose_nginx_serves_the_shipped_site_with_the_replicas_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = make_compose_secrets(dir.path());
    let shipped = read(&repo().join("deploy/nginx/palisade.conf"));
    let site = dir.path().join("site.conf");
    let r = run(Command::new("sh")
        .arg(repo().join("deploy/nginx/compose-site.sh"))
        .arg(repo().join("deploy/nginx/palisade.conf"))
        .arg(&site)
        .env("UPSTREAMS", "127.0.0.1:1 127.0.0.1:2")
        .env("UPSTREAM_NAME", "palisade"));
    assert!(r.ok, "compose-site.sh failed:\n{}", r.stderr);
    let text = read(&site);
    assert!(
        text.contains(
            "    server 127.0.0.1:1 max_fails=3 fail_timeout=10s;\n    \
             server 127.0.0.1:2 max_fails=3 fail_timeout=10s;\n"
        ),
        "{text}"
    );
    assert!(text.contains("    proxy_ssl_name palisade;\n"), "{text}");
    assert!(!text.contains("listen [::]"), "{text}");
    // Every other line is the shipped file's.
    let kept: Vec<&str> = shipped
        .lines()
        .filter(|l| {
            !l.ends_with("# PALISADE_UPSTREAM")
                && !l.ends_with("# PALISADE_UPSTREAM_NAME")
                && !l.trim_start().starts_with("listen [::]")
        })
        .collect();
    let rest: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("    server 127.0.0.1:") && !l.contains("proxy_ssl_name"))
        .collect();
    assert_eq!(rest, kept);
    // nginx takes it, with the certificates make-compose-secrets made (front and upstream CA).
    let (port, http_port) = {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        )
    };
    let live = text
        .replace("/etc/palisade/tls/", &format!("{}/tls/", secrets.display()))
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port} ssl http2;"),
        )
        .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"));
    let nginx = nginx::start_nginx(&live, port);
    drop(nginx);
}

/// `palisade config validate` with only these variables.
fn config_validate(env: &[(String, String)], home: &Path) -> Run {
    run(Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["config", "validate"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
}

#[test]
fn the_binary_accepts_the_configuration_compose_and_helm_give_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let secrets = make_compose_secrets(root);
    // The containers' paths, moved under the temporary directory.
    let r = root.display().to_string();
    let moved = |v: &str| {
        v.replace("/run/secrets/", &format!("{r}/run/secrets/"))
            .replace("/etc/palisade/", &format!("{r}/etc/palisade/"))
            .replace("/var/lib/palisade", &format!("{r}/var/lib/palisade"))
    };

    // Compose: palisade-1's environment, its secrets where Compose mounts them.
    let c = compose();
    let service = &c["services"]["palisade-1"];
    std::fs::create_dir_all(root.join("run/secrets")).unwrap();
    for name in service["secrets"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let file = c["secrets"][name]["file"].as_str().unwrap();
        std::fs::copy(
            secrets.join(file.trim_start_matches("./secrets/")),
            root.join("run/secrets").join(name),
        )
        .unwrap();
    }
    let mut env: Vec<(String, String)> = service["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), moved(v.as_str().unwrap())))
        .collect();
    let out = config_validate(&env, root);
    assert!(
        out.ok && out.stdout.contains("configuration is valid"),
        "compose's environment {env:?}:\n{}{}",
        out.stdout,
        out.stderr
    );
    // The check bites: a key Palisade does not know is refused.
    env.push(("PALISADE_NOT_A_KEY".into(), "1".into()));
    assert!(!config_validate(&env, root).ok);

    // Helm (default values): the container's environment, the Secret's keys, the certificate
    // and the ConfigMap's palisade.toml where the pod mounts them.
    let docs = render_chart(&[]);
    let pod = pod_spec(&docs);
    let etc = root.join("etc/palisade");
    for sub in ["secrets", "tls", "config"] {
        std::fs::create_dir_all(etc.join(sub)).unwrap();
    }
    let volumes = pod["volumes"].as_array().unwrap();
    let mounted = volumes.iter().find(|v| v["name"] == "secrets").unwrap();
    for item in mounted["secret"]["items"].as_array().unwrap() {
        let path = item["path"].as_str().unwrap();
        std::fs::copy(secrets.join(path), etc.join("secrets").join(path)).unwrap();
    }
    std::fs::copy(secrets.join("replica/cert.pem"), etc.join("tls/tls.crt")).unwrap();
    std::fs::copy(secrets.join("replica/key.pem"), etc.join("tls/tls.key")).unwrap();
    let toml = doc(&docs, "ConfigMap")["data"]["palisade.toml"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(etc.join("config/palisade.toml"), toml).unwrap();
    let env: Vec<(String, String)> = pod["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), moved(e["value"].as_str()?))))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "PALISADE_CONFIG"), "{env:?}");
    let out = config_validate(&env, root);
    assert!(
        out.ok && out.stdout.contains("configuration is valid"),
        "the chart's environment {env:?}:\n{}{}",
        out.stdout,
        out.stderr
    );
}
