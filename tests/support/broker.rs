//! Owns the RabbitMQ node that integration tests talk to.
//!
//! * With `AMQP_TEST_URL` set (what `scripts/test.sh` does), that broker is
//!   used as is. `AMQP_TEST_NODE` (Erlang node name), `AMQP_TEST_NODE_HOME`
//!   (directory holding the node's `.erlang.cookie`) and `AMQP_TEST_EPMD_PORT`
//!   (its epmd port) tell [`rabbitmqctl`] how to reach it; without
//!   `AMQP_TEST_NODE`, [`rabbitmqctl`] panics and [`node_name`] is `None`.
//! * Without it, the first call to [`amqp_url`] in a test binary boots ONE
//!   private node for the whole binary (guarded by a [`OnceLock`]) with
//!   `scripts/broker.sh start DIR --watch-pid <this pid>`: fresh temp dir,
//!   free loopback ports, private epmd, no effect on the system RabbitMQ.
//!   Rust tests have no global teardown, so the script's detached watchdog
//!   stops the node and removes DIR once this process is gone, even if it is
//!   SIGKILLed. Booting takes ~5-6 s; a failed boot fails every test of the
//!   binary with the node's log tail (and does not retry).
//!
//! Under `cargo nextest` every test is its own process and would boot its
//! own node: set `AMQP_TEST_URL` there (`scripts/test.sh` does).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The script that boots and stops private nodes (shared with test.sh).
pub const BROKER_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker.sh");

/// How long the AMQP-level readiness probe may take after the script said
/// the node is up.
const PROBE_DEADLINE: Duration = Duration::from_secs(15);

/// Where the tests' broker is and how to control it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub url: String,
    /// Erlang node name (`name@localhost`), when known.
    pub node: Option<String>,
    /// HOME for rabbitmqctl (holds the node's `.erlang.cookie`), when known.
    pub home: Option<PathBuf>,
    /// The node's epmd port (`ERL_EPMD_PORT`), when not the default 4369.
    pub epmd_port: Option<u16>,
    /// The node's state directory (logs in `DIR/log`), when known.
    pub dir: Option<PathBuf>,
    /// The amqps listener's port (127.0.0.1), for nodes booted with `--tls`
    /// ([`private_tls_node`]).
    pub tls_port: Option<u16>,
    /// True when this test binary booted the node.
    pub booted_here: bool,
}

static NODE: OnceLock<Result<NodeInfo, String>> = OnceLock::new();

/// The broker of this test binary; boots it on first use (blocking, up to
/// ~60 s). Panics with the node's log tail if it cannot be booted.
pub fn node() -> &'static NodeInfo {
    match NODE.get_or_init(init) {
        Ok(info) => info,
        Err(e) => panic!("{e}"),
    }
}

/// AMQP URL of the broker to test against: `AMQP_TEST_URL` when set,
/// otherwise the private node of this test binary (booted on first call).
///
/// Synchronous so it works in plain and async tests alike; the first call
/// blocks its thread for the boot (~5-6 s), later calls return at once.
pub fn amqp_url() -> String {
    node().url.clone()
}

/// Erlang name of the broker node, if known (booted here, or
/// `AMQP_TEST_NODE`). `None` means [`rabbitmqctl`] is unavailable.
pub fn node_name() -> Option<String> {
    node().node.clone()
}

/// True when this test binary booted the node itself.
pub fn booted_here() -> bool {
    node().booted_here
}

/// Runs `rabbitmqctl -n NODE ARGS...` against the tests' node and returns
/// its output (whatever the exit status). Uses the real script in
/// `/usr/lib/rabbitmq/bin` (Debian's `/usr/sbin/rabbitmqctl` wrapper would
/// `su rabbitmq` and lose our HOME/cookie), with HOME and ERL_EPMD_PORT of
/// the node, under a 120 s timeout. Each call costs ~0.6-1 s (it boots an
/// Erlang VM).
///
/// Blocks the calling thread: in `#[tokio::test]`s use
/// [`rabbitmqctl_async`], otherwise the test's runtime (lapin connections,
/// an in-process gateway) is frozen while the broker changes state and
/// sees the aftermath late and wrong (e.g. lapin still reports a dropped
/// connection as connected).
///
/// Panics when the node name is unknown: `AMQP_TEST_URL` set without
/// `AMQP_TEST_NODE`.
pub fn rabbitmqctl(args: &[&str]) -> Output {
    rabbitmqctl_on(node(), args)
}

/// [`rabbitmqctl`] against the node described by `info`.
fn rabbitmqctl_on(info: &NodeInfo, args: &[&str]) -> Output {
    let name = info.node.as_deref().unwrap_or_else(|| {
        panic!(
            "rabbitmqctl: node name unknown: AMQP_TEST_URL is set but AMQP_TEST_NODE is not \
             (also set AMQP_TEST_NODE_HOME / AMQP_TEST_EPMD_PORT if the node uses a private \
             cookie / epmd), or unset AMQP_TEST_URL to boot a private node"
        )
    });
    let bin_dir =
        std::env::var("RABBITMQ_BIN_DIR").unwrap_or_else(|_| "/usr/lib/rabbitmq/bin".into());
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "120"])
        .arg(Path::new(&bin_dir).join("rabbitmqctl"))
        .args(["-n", name])
        .args(args)
        .stdin(Stdio::null());
    // Keep the caller's RABBITMQ_* settings and /etc/rabbitmq/rabbitmq-env.conf
    // from redirecting the CLI elsewhere.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RABBITMQ_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RABBITMQ_CONF_ENV_FILE", "/dev/null");
    if let Some(home) = &info.home {
        cmd.env("HOME", home);
    }
    if let Some(port) = info.epmd_port {
        cmd.env("ERL_EPMD_PORT", port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }
    // erl_crash.dump & co. land in cwd: keep them out of the repo.
    cmd.current_dir(info.dir.clone().unwrap_or_else(std::env::temp_dir));
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl in {bin_dir}: {e}"))
}

/// Like [`rabbitmqctl`], but panics (with stdout/stderr) unless it exits 0;
/// returns stdout.
pub fn rabbitmqctl_ok(args: &[&str]) -> String {
    let out = rabbitmqctl(args);
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`rabbitmqctl`] on tokio's blocking pool, so the test's runtime keeps
/// serving lapin connections and in-process servers meanwhile.
pub async fn rabbitmqctl_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl(&args)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// [`rabbitmqctl_ok`] on tokio's blocking pool (see [`rabbitmqctl_async`]).
pub async fn rabbitmqctl_ok_async(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl_ok(&args)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A RabbitMQ node of this test binary's own, booted with `scripts/broker.sh` whether or not
/// `AMQP_TEST_URL` is set: for fault tests that stop, kill, disconnect or alarm the broker,
/// which must never do that to the node other tests share.
///
/// One per test binary ([`private_node`]); tests in the binary that fault it must run one at a
/// time (hold a lock). Like the shared node, it is stopped and removed by the script's watchdog
/// once the test process is gone.
#[derive(Debug)]
pub struct PrivateNode {
    info: NodeInfo,
}

static PRIVATE: OnceLock<Result<PrivateNode, String>> = OnceLock::new();
static PRIVATE_TLS: OnceLock<Result<PrivateNode, String>> = OnceLock::new();

/// The private node of this test binary; boots it on first use (~5 s, on tokio's blocking
/// pool). Panics with the node's log tail if it cannot be booted.
pub async fn private_node() -> &'static PrivateNode {
    private_once(&PRIVATE, None).await
}

/// A private node with an amqps listener next to the plain one (`broker.sh start --tls
/// CERTDIR`; CERTDIR holds `ca.pem`, `server.pem`, `server.key`): [`PrivateNode::tls_port`].
/// One per test binary, like [`private_node`] (and a different node from it): booted on first
/// use with the `certdir` of that call; later calls return it whatever they pass.
pub async fn private_tls_node(certdir: &Path) -> &'static PrivateNode {
    private_once(&PRIVATE_TLS, Some(certdir.to_path_buf())).await
}

async fn private_once(
    cell: &'static OnceLock<Result<PrivateNode, String>>,
    certdir: Option<PathBuf>,
) -> &'static PrivateNode {
    let node = tokio::task::spawn_blocking(move || {
        cell.get_or_init(|| boot_node(certdir.as_deref()).map(|info| PrivateNode { info }))
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    match node {
        Ok(node) => node,
        Err(e) => panic!("{e}"),
    }
}

impl PrivateNode {
    /// A handle on a node booted elsewhere by `scripts/broker.sh` (a cluster member of
    /// `support::cluster`): `info.dir` must be the node's DIR, for `down`/`up`/logs.
    pub fn from_info(info: NodeInfo) -> PrivateNode {
        PrivateNode { info }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`; the port stays the same across
    /// [`PrivateNode::down`] / [`PrivateNode::up`].
    pub fn url(&self) -> &str {
        &self.info.url
    }

    /// Where it is and how to control it.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The amqps port (127.0.0.1) of a node from [`private_tls_node`]; panics for others.
    pub fn tls_port(&self) -> u16 {
        self.info
            .tls_port
            .expect("not a TLS node: boot it with private_tls_node")
    }

    /// `rabbitmqctl ARGS...` against this node, on tokio's blocking pool (see
    /// [`rabbitmqctl_async`]); returns the output whatever the exit status.
    pub async fn ctl(&self, args: &[&str]) -> Output {
        let info = self.info.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rabbitmqctl_on(&info, &args)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Like [`PrivateNode::ctl`], but panics unless it exits 0; returns stdout.
    pub async fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args).await;
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the node's Erlang VM (`broker.sh down`): gracefully (clients get
    /// `connection.close`), or with `kill` by SIGKILL (sockets reset, no goodbye). State,
    /// ports and epmd stay for [`PrivateNode::up`]. Returns once the VM is gone.
    pub async fn down(&self, kill: bool) {
        let mut args = vec!["down"];
        if kill {
            args.push("--kill");
        }
        self.script(&args).await;
    }

    /// Boots the VM again on the same ports with the same data (`broker.sh up`) and returns
    /// once it accepts AMQP connections.
    pub async fn up(&self) {
        self.script(&["up"]).await;
    }

    /// Tail of the node's logs.
    pub fn log_tail(&self, lines: usize) -> String {
        match &self.info.dir {
            Some(dir) => log_tail(dir, lines),
            None => String::new(),
        }
    }

    async fn script(&self, args: &[&str]) {
        let dir = self
            .info
            .dir
            .clone()
            .expect("a private node has a state dir");
        let shown = args.join(" ");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let (cmd, rest) = args.split_first().expect("a command");
            Command::new("timeout")
                .args(["--kill-after=5", "120", "bash", BROKER_SH, cmd])
                .arg(&dir)
                .args(rest)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {BROKER_SH}: {e}"))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        assert!(
            out.status.success(),
            "broker.sh {shown} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
    }
}

/// Tail of the node's logs (only for nodes booted by broker.sh: booted here
/// or `AMQP_TEST_BROKER_DIR` set); for failure messages.
pub fn node_log_tail(lines: usize) -> String {
    match &node().dir {
        Some(dir) => log_tail(dir, lines),
        None => "(node logs unknown: broker not booted by scripts/broker.sh)".into(),
    }
}

/// A TCP port that was free on 127.0.0.1 when this returned (bind to
/// port 0, read it, release it). Racy by nature; prefer binding port 0.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn init() -> Result<NodeInfo, String> {
    match std::env::var("AMQP_TEST_URL") {
        Ok(url) if !url.is_empty() => Ok(from_env(url)),
        _ => boot(),
    }
}

fn from_env(url: String) -> NodeInfo {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    NodeInfo {
        url,
        node: var("AMQP_TEST_NODE"),
        home: var("AMQP_TEST_NODE_HOME").map(PathBuf::from),
        epmd_port: var("AMQP_TEST_EPMD_PORT").map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("AMQP_TEST_EPMD_PORT={p:?} is not a port"))
        }),
        dir: var("AMQP_TEST_BROKER_DIR").map(PathBuf::from),
        tls_port: None,
        booted_here: false,
    }
}

fn boot() -> Result<NodeInfo, String> {
    boot_node(None)
}

/// Boots a node with `broker.sh start`, with an amqps listener too when `tls` names a
/// certificate directory. A failed boot is tried twice more, on fresh ports: the ports are
/// picked free but bound only later, so another node booting at the same moment (another test
/// binary's, or another suite's on the same machine) can take one first (seen once as
/// `eaddrinuse` on the distribution port).
fn boot_node(tls: Option<&Path>) -> Result<NodeInfo, String> {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match boot_node_once(tls) {
            Ok(info) => return Ok(info),
            Err(e) => failures.push(e),
        }
    }
    Err(failures.join("\n---- next attempt ----\n"))
}

/// A new directory `<tmp>/<prefix>-<pid>-<nanos>` for one node's (or cluster's) files.
pub fn fresh_dir(prefix: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:09}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn boot_node_once(tls: Option<&Path>) -> Result<NodeInfo, String> {
    let started = Instant::now();
    let dir = fresh_dir("amqp-gateway-test")?;

    let mut cmd = Command::new("bash");
    cmd.arg(BROKER_SH)
        .arg("start")
        .arg(&dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string());
    if let Some(certdir) = tls {
        cmd.arg("--tls").arg(certdir);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {BROKER_SH}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "could not boot a private RabbitMQ node ({BROKER_SH} start {} exited {}); \
             is rabbitmq-server installed (apt-get install -y rabbitmq-server)?\n{stderr}",
            dir.display(),
            out.status
        ));
    }

    let exports = parse_exports(&String::from_utf8_lossy(&out.stdout));
    let get = |k: &str| export(&exports, k, "start", &stderr);
    let info = NodeInfo {
        url: get("AMQP_TEST_URL")?,
        node: Some(get("AMQP_TEST_NODE")?),
        home: Some(PathBuf::from(get("AMQP_TEST_NODE_HOME")?)),
        epmd_port: Some(
            get("AMQP_TEST_EPMD_PORT")?
                .parse()
                .map_err(|e| format!("bad AMQP_TEST_EPMD_PORT: {e}"))?,
        ),
        dir: Some(dir.clone()),
        tls_port: match tls {
            Some(_) => Some(
                get("AMQP_TEST_TLS_PORT")?
                    .parse()
                    .map_err(|e| format!("bad AMQP_TEST_TLS_PORT: {e}"))?,
            ),
            None => None,
        },
        booted_here: true,
    };

    // The script waited for the rabbit app; double-check at the AMQP level
    // that the listener speaks AMQP, under a deadline.
    probe_amqp(&info.url, PROBE_DEADLINE).map_err(|e| {
        format!(
            "node {} booted but its AMQP listener is not usable: {e}\n{}",
            info.node.as_deref().unwrap_or("?"),
            log_tail(&dir, 40)
        )
    })?;
    eprintln!(
        "support::broker: booted private RabbitMQ node {} at {} in {:.1?} (state in {})",
        info.node.as_deref().unwrap_or("?"),
        info.url,
        started.elapsed(),
        dir.display()
    );
    Ok(info)
}

/// Parses `export NAME=VALUE` lines printed with bash's `printf %q`.
pub fn parse_exports(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), unquote(v)))
        .collect()
}

/// Looks `name` up in `exports`; the error names what `command` failed to print, with its
/// stderr.
pub fn export(
    exports: &[(String, String)],
    name: &str,
    command: &str,
    stderr: &str,
) -> Result<String, String> {
    exports
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("{BROKER_SH} {command} did not print {name}:\n{stderr}"))
}

/// Undoes `printf %q` for the values broker.sh prints (paths, URLs, names):
/// backslash escapes and single quotes.
fn unquote(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    let mut in_single = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' => in_single = !in_single,
            '\\' if !in_single => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Sends the AMQP 0-9-1 protocol header and expects a `connection.start`
/// method frame back; retries until `deadline` elapses.
fn probe_amqp(url: &str, deadline: Duration) -> Result<(), String> {
    let addr = url
        .split_once('@')
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("cannot parse host:port from {url}"))?
        .to_string();
    let until = Instant::now() + deadline;
    let mut last = String::new();
    while Instant::now() < until {
        match try_probe(&addr) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{addr}: {last} (for {deadline:?})"))
}

fn try_probe(addr: &str) -> Result<(), String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| format!("write: {e}"))?;
    // Frame header (type, channel, size) + class 10 / method 10.
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    if buf[0] == 1 && buf[1..3] == [0, 0] && buf[7..11] == [0, 10, 0, 10] {
        Ok(())
    } else {
        Err(format!("unexpected reply {buf:02x?}"))
    }
}

fn log_tail(dir: &Path, lines: usize) -> String {
    Command::new("bash")
        .arg(BROKER_SH)
        .arg("logs")
        .arg(dir)
        .arg(lines.to_string())
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(cannot read logs in {}: {e})", dir.display()))
}
