//! Owns real nginx in front of gateways under test: [`Nginx::start`] runs the Debian package's
//! binary with a config derived from `deploy/nginx.conf` (the one we ship), so the tests check
//! what operators deploy, not a look-alike.
//!
//! The derivation changes only what a test must change, each substitution asserted to apply:
//! the upstream `server` lines (our instances, same parameters), the listen address (loopback,
//! a free port), logs, pid and temp paths (a private directory), one worker (2-core CI), and
//! `user` (workers run as the current user). Everything else — keep-alive, retries, timeouts,
//! forwarded headers, request ids — is used as shipped.
//!
//! nginx runs in the foreground (`daemon off`) as a child process; dropping [`Nginx`] stops it
//! (SIGTERM, then SIGKILL) and removes its directory. If nginx is not installed the test fails
//! with a message saying how to install it: it never skips.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped config this module derives from.
pub const DEPLOY_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf");

/// How long nginx may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A running nginx.
pub struct Nginx {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Prefix directory: config, logs, temp files.
    pub dir: PathBuf,
    child: Child,
}

/// The nginx binary: `PATH`, then the usual sbin directories (not always on a non-root PATH).
pub fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: these tests run real nginx in front of the gateway. \
                 Install Debian's package (apt-get install -y nginx; scripts/test.sh does it)"
            )
        })
}

/// `deploy/nginx.conf` turned into a config for this test: upstream `servers`, listening on
/// `127.0.0.1:port`, everything writable under `dir`. Panics if the shipped file no longer
/// has a line this relies on.
pub fn derive_config(shipped: &str, servers: &[SocketAddr], port: u16, dir: &Path) -> String {
    let dir = dir.display();
    let mut out = String::new();
    // Top of the main context: pid, user, a writable lock/pid location.
    out.push_str(&format!("pid {dir}/nginx.pid;\n"));
    if is_root() {
        // Workers would otherwise switch to nobody/www-data and could not use `dir`.
        out.push_str("user root;\n");
    }
    let mut upstream_servers = 0;
    let mut listen = 0;
    let mut error_log = 0;
    let mut access_log = 0;
    let mut workers = 0;
    let mut in_upstream = false;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("upstream ") && trimmed.ends_with('{') {
            in_upstream = true;
        } else if in_upstream && trimmed.starts_with('}') {
            in_upstream = false;
        }
        if in_upstream && trimmed.starts_with("server ") {
            // `server gatewayN:8080 max_fails=0;` → ours, with the same parameters.
            upstream_servers += 1;
            if upstream_servers == 1 {
                let params: Vec<&str> = trimmed
                    .trim_end_matches(';')
                    .split_whitespace()
                    .skip(2)
                    .collect();
                for s in servers {
                    out.push_str(&format!("        server {s} {};\n", params.join(" ")));
                }
            }
            continue;
        }
        if trimmed.starts_with("listen ") {
            listen += 1;
            out.push_str(&format!("        listen 127.0.0.1:{port};\n"));
            continue;
        }
        if trimmed.starts_with("error_log ") {
            error_log += 1;
            out.push_str(&format!("error_log {dir}/error.log warn;\n"));
            continue;
        }
        if trimmed.starts_with("access_log ") {
            access_log += 1;
            let format = trimmed
                .trim_end_matches(';')
                .split_whitespace()
                .nth(2)
                .unwrap_or("");
            out.push_str(&format!("    access_log {dir}/access.log {format};\n"));
            // Temp files next to the logs (the compiled-in paths are /var/lib/nginx/...).
            for (directive, sub) in [
                ("client_body_temp_path", "body"),
                ("proxy_temp_path", "proxy"),
                ("fastcgi_temp_path", "fastcgi"),
                ("uwsgi_temp_path", "uwsgi"),
                ("scgi_temp_path", "scgi"),
            ] {
                out.push_str(&format!("    {directive} {dir}/{sub};\n"));
            }
            continue;
        }
        if trimmed.starts_with("worker_processes ") {
            workers += 1;
            out.push_str("worker_processes 1;\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (what, n) in [
        ("upstream `server` lines", upstream_servers),
        ("`listen`", listen),
        ("`error_log`", error_log),
        ("`access_log`", access_log),
        ("`worker_processes`", workers),
    ] {
        assert!(
            n >= 1,
            "{DEPLOY_CONF} has no {what} line: update tests/support/nginx.rs"
        );
    }
    out
}

/// The upstream block's `keepalive_timeout` in the shipped config: how long nginx may keep an
/// idle connection to an instance (an instance draining for longer never sees one reused).
pub fn upstream_keepalive_timeout(shipped: &str) -> Duration {
    let mut in_upstream = false;
    for line in shipped.lines() {
        let t = line.split('#').next().unwrap_or("").trim();
        if t.starts_with("upstream ") && t.ends_with('{') {
            in_upstream = true;
        } else if in_upstream && t.starts_with('}') {
            in_upstream = false;
        } else if in_upstream && let Some(v) = t.strip_prefix("keepalive_timeout ") {
            let v = v.trim_end_matches(';').trim();
            let secs: u64 = v
                .strip_suffix('s')
                .unwrap_or(v)
                .parse()
                .unwrap_or_else(|_| {
                    panic!("cannot read keepalive_timeout {v:?} (seconds expected)")
                });
            return Duration::from_secs(secs);
        }
    }
    // nginx's default.
    Duration::from_secs(60)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The address of a gateway or origin from its `http://127.0.0.1:PORT` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

impl Nginx {
    /// Starts nginx with the derived `deploy/nginx.conf` in front of `servers`, and waits until
    /// it accepts connections. Panics (with nginx's error log) if it cannot start.
    pub fn start(servers: &[SocketAddr]) -> Nginx {
        let binary = nginx_binary();
        let shipped = std::fs::read_to_string(DEPLOY_CONF)
            .unwrap_or_else(|e| panic!("read {DEPLOY_CONF}: {e}"));
        let dir = std::env::temp_dir().join(crate::support::unique_name("nginx-test"));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let conf = dir.join("nginx.conf");
        let mut last_error = String::new();
        // The port is picked free, then bound by nginx: retry the rare race.
        for _attempt in 0..3 {
            let port = crate::support::free_port();
            std::fs::write(&conf, derive_config(&shipped, servers, port, &dir)).unwrap();
            let mut child = Command::new(&binary)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "nginx exited with {status}:\n{}",
                        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Nginx {
                        url: format!("http://{addr}"),
                        dir,
                        child,
                    };
                }
                if started.elapsed() > START_DEADLINE {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nginx did not accept connections on {addr} within {START_DEADLINE:?}:\n{}",
                        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("nginx could not start: {last_error}");
    }

    /// `self.url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The access log so far (format `gateway` of deploy/nginx.conf).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown of master and workers; SIGKILL only if that hangs (a killed
        // master would orphan its worker).
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
