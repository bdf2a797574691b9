//! Owns the RabbitMQ cluster of cluster fault tests: [`cluster`] boots ONE private 3-node
//! cluster per test binary (guarded by a [`OnceLock`], like `support::broker` does for its
//! node) with `scripts/broker.sh cluster-start DIR 3 --watch-pid <this pid>`: three nodes on
//! loopback sharing a private epmd and cookie, free ports, no effect on the system RabbitMQ or
//! on the node other test binaries share. The script's detached watchdog removes it once this
//! process is gone (Rust tests have no global teardown).
//!
//! Each member is a [`PrivateNode`] (`down`/`up`/`ctl` on `DIR/nK`); [`Cluster::freeze`]
//! SIGSTOPs one ([`Frozen`] SIGCONTs it on drop, so a failing test never leaves it frozen);
//! [`Cluster::heal`] brings every member back and waits until the cluster and a queue are
//! whole again; [`Cluster::queue_leader`] names a quorum queue's leader.
//!
//! Booting takes ~20 s on 2 cores (members boot one after the other). A failed boot fails the
//! tests with every member's log tail instead of hanging: the script has a deadline per node.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::broker::{BROKER_SH, NodeInfo, PrivateNode, export, parse_exports};

/// Members of the test cluster: 3, the smallest cluster with majority semantics (a quorum
/// queue survives one node down, not two).
pub const SIZE: usize = 3;

/// Bound on `cluster-start` as a whole (the script has its own per-node deadlines inside).
const BOOT_DEADLINE: Duration = Duration::from_secs(240);

/// The private cluster of this test binary.
#[derive(Debug)]
pub struct Cluster {
    /// DIR: the shared cookie, epmd, and `n1`..`n3`.
    pub dir: PathBuf,
    members: Vec<PrivateNode>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster of this test binary; boots it on first use (~20 s, on tokio's blocking pool).
/// Panics with every member's log tail if it cannot be booted.
pub async fn cluster() -> &'static Cluster {
    let c = tokio::task::spawn_blocking(|| CLUSTER.get_or_init(boot))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    match c {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn boot() -> Result<Cluster, String> {
    let started = Instant::now();
    let dir = super::broker::fresh_dir("amqp-gateway-cluster")?;
    let out = Command::new("timeout")
        .args(["--kill-after=5", &BOOT_DEADLINE.as_secs().to_string()])
        .args(["bash", BROKER_SH, "cluster-start"])
        .arg(&dir)
        .arg(SIZE.to_string())
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {BROKER_SH}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        // The script printed the members' logs on stderr; keep DIR for a closer look unless
        // there is nothing in it.
        let logs = logs_of(&dir, 60);
        let _ = Command::new("bash")
            .args([BROKER_SH, "cluster-stop"])
            .arg(&dir)
            .stdin(Stdio::null())
            .output();
        return Err(format!(
            "could not boot a private {SIZE}-node RabbitMQ cluster ({BROKER_SH} cluster-start {} \
             exited {}); is rabbitmq-server installed (apt-get install -y rabbitmq-server)?\n\
             {stderr}\n{logs}",
            dir.display(),
            out.status
        ));
    }
    let exports = parse_exports(&String::from_utf8_lossy(&out.stdout));
    let get = |k: &str| export(&exports, k, "cluster-start", &stderr);
    let urls = get("AMQP_CLUSTER_URLS")?;
    let nodes = get("AMQP_CLUSTER_NODES")?;
    let dirs = get("AMQP_CLUSTER_DIRS")?;
    let epmd_port: u16 = get("AMQP_CLUSTER_EPMD_PORT")?
        .parse()
        .map_err(|e| format!("bad AMQP_CLUSTER_EPMD_PORT: {e}"))?;
    let members: Vec<PrivateNode> = urls
        .split_whitespace()
        .zip(nodes.split_whitespace())
        .zip(dirs.split_whitespace())
        .map(|((url, node), member_dir)| {
            PrivateNode::from_info(NodeInfo {
                url: url.to_owned(),
                node: Some(node.to_owned()),
                home: Some(PathBuf::from(member_dir)),
                epmd_port: Some(epmd_port),
                dir: Some(PathBuf::from(member_dir)),
                tls_port: None,
                booted_here: true,
            })
        })
        .collect();
    if members.len() != SIZE {
        return Err(format!(
            "cluster-start printed {} members, not {SIZE}:\n{urls}\n{nodes}\n{dirs}",
            members.len()
        ));
    }
    eprintln!(
        "support::cluster: booted a private {SIZE}-node RabbitMQ cluster in {:.1?}: {urls} \
         (state in {})",
        started.elapsed(),
        dir.display()
    );
    Ok(Cluster { dir, members })
}

fn logs_of(dir: &std::path::Path, lines: usize) -> String {
    Command::new("bash")
        .args([BROKER_SH, "logs"])
        .arg(dir)
        .arg(lines.to_string())
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(cannot read logs in {}: {e})", dir.display()))
}

/// `amqp://…:PORT/…` → `127.0.0.1:PORT` (what `/readyz` calls a node).
fn addr_of(url: &str) -> String {
    url.split_once('@')
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

impl Cluster {
    /// The members, n1 first.
    pub fn members(&self) -> &[PrivateNode] {
        &self.members
    }

    /// Member `i` (0-based: `member(0)` is n1).
    pub fn member(&self, i: usize) -> &PrivateNode {
        &self.members[i]
    }

    /// The AMQP URL of every member, n1 first.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url().to_owned()).collect()
    }

    /// Erlang node name of member `i`.
    pub fn node_name(&self, i: usize) -> &str {
        self.members[i].info().node.as_deref().unwrap()
    }

    /// The member listening on `host:port` (as `/readyz` names a slot's node).
    pub fn by_addr(&self, addr: &str) -> Option<usize> {
        self.members.iter().position(|m| addr_of(m.url()) == addr)
    }

    /// The member named `node` (Erlang name).
    pub fn by_node(&self, node: &str) -> Option<usize> {
        (0..SIZE).find(|&i| self.node_name(i) == node)
    }

    /// Tail of every member's logs, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        logs_of(&self.dir, lines)
    }

    /// OS pid of member `i`'s Erlang VM.
    pub fn vm_pid(&self, i: usize) -> String {
        let dir = self.members[i].info().dir.clone().unwrap();
        std::fs::read_to_string(dir.join("rabbit.pid"))
            .unwrap_or_else(|e| panic!("{}/rabbit.pid: {e}", dir.display()))
            .trim()
            .to_owned()
    }

    /// True when member `i`'s VM runs (it may still be booting or frozen).
    pub fn vm_alive(&self, i: usize) -> bool {
        let dir = self.members[i].info().dir.clone().unwrap();
        let Ok(pid) = std::fs::read_to_string(dir.join("rabbit.pid")) else {
            return false;
        };
        // A zombie or a missing process is not alive.
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    /// SIGSTOPs member `i`'s VM; the guard SIGCONTs it (also when the test panics).
    pub fn freeze(&self, i: usize) -> Frozen {
        let pid = self.vm_pid(i);
        signal("-STOP", &pid);
        Frozen(Some(pid))
    }

    /// `rabbitmqctl` on member `i`, whatever the exit status.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> Output {
        self.members[i].ctl(args).await
    }

    /// Erlang names of the nodes member `i` sees running (`cluster_status`); empty when it
    /// does not answer.
    pub async fn running_nodes(&self, i: usize) -> Vec<String> {
        let out = self
            .ctl(i, &["cluster_status", "--formatter", "json"])
            .await;
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                v["running_nodes"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// `name`, `leader`, `members` and `online` of quorum queue `queue`, asked of member `i`;
    /// `None` when it does not answer or does not list the queue.
    pub async fn queue_status(&self, i: usize, queue: &str) -> Option<QueueStatus> {
        let out = self
            .ctl(
                i,
                &[
                    "list_queues",
                    "name",
                    "leader",
                    "members",
                    "online",
                    "--formatter",
                    "json",
                ],
            )
            .await;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let q = v.as_array()?.iter().find(|q| q["name"] == queue)?;
        let names = |k: &str| -> Vec<String> {
            q[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(QueueStatus {
            leader: q["leader"].as_str().map(str::to_owned),
            members: names("members"),
            online: names("online"),
        })
    }

    /// The member leading quorum queue `queue` now (asked of the first member that answers).
    pub async fn queue_leader(&self, queue: &str) -> Option<usize> {
        for i in 0..SIZE {
            if !self.vm_alive(i) {
                continue;
            }
            if let Some(s) = self.queue_status(i, queue).await {
                return s.leader.as_deref().and_then(|l| self.by_node(l));
            }
        }
        None
    }

    /// Boots every member that is down, then waits (up to `timeout`) until every member lists
    /// all [`SIZE`] running and, with `queue`, the quorum queue has all its members online and
    /// a leader. Panics with the logs otherwise. Returns how long it took.
    pub async fn heal(&self, queue: Option<&str>, timeout: Duration) -> Duration {
        let started = Instant::now();
        for i in 0..SIZE {
            if !self.vm_alive(i) {
                self.members[i].up().await;
            }
        }
        let all: Vec<String> = (0..SIZE).map(|i| self.node_name(i).to_owned()).collect();
        let mut last = String::new();
        loop {
            let mut whole = true;
            for i in 0..SIZE {
                let mut running = self.running_nodes(i).await;
                running.sort();
                let mut want = all.clone();
                want.sort();
                if running != want {
                    whole = false;
                    last = format!("n{} sees running {running:?}", i + 1);
                    break;
                }
            }
            if whole && let Some(q) = queue {
                match self.queue_status(0, q).await {
                    Some(s) if s.leader.is_some() && s.online.len() == SIZE => {}
                    s => {
                        whole = false;
                        last = format!("queue {q}: {s:?}");
                    }
                }
            }
            if whole {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "cluster not whole within {timeout:?}: {last}\n{}",
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A quorum queue as `rabbitmqctl list_queues` shows it.
#[derive(Debug, Clone)]
pub struct QueueStatus {
    /// Erlang name of the leader's node.
    pub leader: Option<String>,
    /// Nodes holding a replica.
    pub members: Vec<String>,
    /// Replicas that are up.
    pub online: Vec<String>,
}

/// A SIGSTOPped VM, resumed (SIGCONT) on [`Frozen::thaw`] or drop.
pub struct Frozen(Option<String>);

impl Frozen {
    /// SIGCONT now.
    pub fn thaw(mut self) {
        if let Some(pid) = self.0.take() {
            signal("-CONT", &pid);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
        }
    }
}

fn signal(sig: &str, pid: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}
