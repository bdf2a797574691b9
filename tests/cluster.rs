//! The gateway on a 3-node RabbitMQ cluster (`support::cluster`: private nodes of this test
//! binary's own, booted by `scripts/broker.sh cluster-start`) publishing into a quorum queue,
//! while nodes fail under a steady write load:
//!
//! a. the queue leader's node is killed (SIGKILL) while the gateway is connected elsewhere;
//! b. the node the gateway is connected to is killed;
//! c. two nodes are stopped (quorum lost): while lost, no 2xx at all (only 503/504); after
//!    they are back, 2xx again;
//! d. the node the gateway is connected to is frozen (SIGSTOP) and resumed (SIGCONT).
//!
//! Each phase runs the same checks afterwards, once the cluster is whole again: every write
//! answered 2xx is in the queue (drain and count: lost = 0), nothing answered 503 is, every
//! duplicated message was answered 504 (outcome unknown: the only answer that may hide one),
//! and a 2xx came again after the fault (the time to it is recorded). A summary table per
//! phase goes to stderr.
//!
//! The phases share the cluster, so they run one after the other in ONE test, each under a
//! hard deadline, with the cluster healed (all members running, the queue's replicas online)
//! and asserted in between. The gateway has one connection (`connections = 1`), so "the node
//! the gateway is connected to" is one node, read from `/readyz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use lapin::ExchangeKind;
use support::cluster::{Cluster, SIZE, cluster};
use support::gateway::events_config;
use support::load::{DrainReport, Reply, Writers, client};
use support::{TestGateway, TestQueue, unique_name};

/// `amqp.confirm_timeout` of the gateway: a write the broker does not confirm within this is
/// answered 504.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// AMQP heartbeat asked for in the URLs: a frozen node is noticed after ~2 heartbeats.
const HEARTBEAT_SECS: u64 = 2;
/// Concurrent writers, and the pause each makes between writes: a modest load (2 cores, three
/// Erlang VMs).
const WRITERS: usize = 3;
const PAUSE: Duration = Duration::from_millis(25);
/// 2xx answers to see before a fault (warm-up) and after it (steady again).
const STEADY: usize = 20;
/// How long two nodes stay stopped in phase c.
const LOST_WINDOW: Duration = Duration::from_secs(8);
/// How long the load goes on after a fault (a, b, d) before the cluster is healed: the whole
/// transition under load, not just the first answers after it (and, in d, how long the node
/// stays frozen: far below the ~45 s after which the other members would drop it).
const OBSERVE: Duration = Duration::from_secs(8);
/// Hard deadline of one phase, healing and draining included.
const PHASE_DEADLINE: Duration = Duration::from_secs(150);
/// Deadline for the cluster (and the queue) to be whole again.
const HEAL: Duration = Duration::from_secs(90);
/// Deadline for writes to be confirmed again after a fault (or after the restart in c).
const RECOVERY: Duration = Duration::from_secs(45);

/// The gateway config: `[amqp] urls` = the members (heartbeat 2 s), one connection, and a
/// POST route publishing to `exchange` with routing key `ev.{id}`.
fn config(c: &Cluster, exchange: &str) -> String {
    let urls: Vec<String> = c
        .urls()
        .iter()
        .map(|u| format!("{u}?heartbeat={HEARTBEAT_SECS}"))
        .collect();
    events_config(
        &c.urls()[0],
        exchange,
        "",
        &format!(
            "urls = {urls:?}\nconnections = 1\nconfirm_timeout = \"{}s\"\nconnect_timeout = \"1s\"\nretry_after = \"1s\"",
            CONFIRM_TIMEOUT.as_secs()
        ),
    )
}

/// The member the gateway's one connection is on, per `/readyz` (`None` while it has none).
async fn gateway_node(c: &Cluster, gw: &TestGateway) -> Option<usize> {
    let body: serde_json::Value = client()
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let node = body["connections"][0]["node"].as_str()?;
    c.by_addr(node)
}

/// A gateway on the cluster and an exchange, ready with its connection on a member.
async fn start_gateway(c: &Cluster, exchange: &str) -> (TestGateway, usize) {
    let gw = TestGateway::start(&config(c, exchange)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(g) = gateway_node(c, &gw).await {
            return (gw, g);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz names no node for the gateway's connection"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One phase's gateway, quorum queue and writers.
struct Phase {
    name: &'static str,
    c: &'static Cluster,
    gw: TestGateway,
    /// Member the gateway was connected to when the phase began.
    gw_node: usize,
    queue: TestQueue,
    writers: Option<Writers>,
    started: Instant,
}

impl Phase {
    /// Heals the cluster, starts a gateway, declares a quorum queue on the exchange through
    /// member `declare_via(gateway node)` (the leader starts on the declaring node: queue
    /// leader locator client-local), and waits until the queue lists a leader.
    async fn start(name: &'static str, declare_via: impl Fn(usize) -> usize) -> Phase {
        let c = cluster().await;
        c.heal(None, HEAL).await;
        let exchange = unique_name("cluster");
        let (gw, gw_node) = start_gateway(c, &exchange).await;
        let via = declare_via(gw_node);
        let queue = TestQueue::bind_quorum(
            c.member(via).url(),
            &exchange,
            Some(ExchangeKind::Topic),
            "ev.*",
        )
        .await;
        // All replicas online and a leader: the phase starts from a whole queue.
        c.heal(Some(&queue.name), HEAL).await;
        Phase {
            name,
            c,
            gw,
            gw_node,
            queue,
            writers: None,
            started: Instant::now(),
        }
    }

    fn leader_or_panic(&self, leader: Option<usize>) -> usize {
        leader.unwrap_or_else(|| panic!("[{}] queue {} has no leader", self.name, self.queue.name))
    }

    /// Starts the writers and waits for [`STEADY`] 2xx answers.
    async fn load(&mut self) {
        let base = self.gw.url.clone();
        let writers = Writers::start(WRITERS, self.name, PAUSE, move |c, n| {
            format!("{base}/events/{c}-{n}")
        });
        self.writers = Some(writers);
        self.started = Instant::now();
        self.wait_accepted(self.started, STEADY, RECOVERY, "warm-up")
            .await;
    }

    fn replies(&self) -> Vec<Reply> {
        self.writers.as_ref().unwrap().ledger.replies()
    }

    /// Waits until `n` writes sent at or after `since` were answered 2xx; returns the time from
    /// `since` to the first such answer.
    async fn wait_accepted(
        &self,
        since: Instant,
        n: usize,
        timeout: Duration,
        what: &str,
    ) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            let replies = self.replies();
            let mut ok: Vec<&Reply> = replies
                .iter()
                .filter(|r| r.accepted() && r.sent_at >= since)
                .collect();
            if ok.len() >= n {
                ok.sort_by_key(|r| r.answered_at());
                return ok[0].answered_at() - since;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] {what}: {} of {n} writes accepted within {timeout:?}; answers so far: {:?}",
                self.name,
                ok.len(),
                support::load::status_counts(&replies)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Lets the load run until [`OBSERVE`] has passed since `fault`.
    async fn observe(&self, fault: Instant) {
        let until = fault + OBSERVE;
        let now = Instant::now();
        if until > now {
            tokio::time::sleep(until - now).await;
        }
    }

    /// Polls until the queue's leader is a member other than `old`; returns it.
    async fn new_leader(&self, old: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = self.c.queue_leader(&self.queue.name).await;
            if let Some(l) = leader
                && l != old
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] queue {} still led by {leader:?}, not by a live member",
                self.name,
                self.queue.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the writers, heals the cluster, drains the queue and checks it against the
    /// answers; returns the summary row.
    async fn finish(mut self, fault: Instant, first_2xx: Duration, note: String) -> Row {
        let replies = self.writers.take().unwrap().stop().await;
        let healed = self.c.heal(Some(&self.queue.name), HEAL).await;
        let drained = self
            .queue
            .consume_all(Duration::from_secs(1), Duration::from_secs(60))
            .await;
        let report = DrainReport::new(&replies, &drained);
        eprintln!("[{}] healed in {healed:.1?}; {report}", self.name);

        // Duplicates: only a write answered 504 (or not at all) may have one.
        let by_key: HashMap<&str, &Reply> = replies.iter().map(|r| (r.key.as_str(), r)).collect();
        let mut copies: HashMap<String, usize> = HashMap::new();
        for d in &drained {
            if let Some(k) = d.properties.correlation_id().as_ref() {
                *copies.entry(k.as_str().to_owned()).or_default() += 1;
            }
        }
        let dup_statuses: Vec<(String, u16)> = copies
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| (k.clone(), by_key.get(k.as_str()).map_or(0, |r| r.status)))
            .collect();
        let gap = longest_gap(&replies, fault);
        let row = Row {
            name: self.name,
            report,
            first_2xx,
            gap,
            dup_statuses,
            note,
        };
        eprintln!("{}", table(std::slice::from_ref(&row)));

        row.report.assert_sound();
        assert!(
            row.dup_statuses.iter().all(|(_, s)| *s == 504 || *s == 0),
            "[{}] a message answered other than 504 was queued twice: {:?}",
            self.name,
            row.dup_statuses
        );
        self.queue.delete().await;
        self.gw.shutdown().await;
        row
    }
}

/// The longest time without a 2xx answer from `fault` on (until the last 2xx).
fn longest_gap(replies: &[Reply], fault: Instant) -> Duration {
    let mut times: Vec<Instant> = replies
        .iter()
        .filter(|r| r.accepted())
        .map(Reply::answered_at)
        .filter(|t| *t >= fault)
        .collect();
    times.sort();
    let mut gap = Duration::ZERO;
    let mut prev = fault;
    for t in times {
        gap = gap.max(t - prev);
        prev = t;
    }
    gap
}

/// One phase's line of the summary.
#[derive(Debug)]
struct Row {
    name: &'static str,
    report: DrainReport,
    /// From the fault (in c: from the restart) to the first 2xx of a write sent after it.
    first_2xx: Duration,
    /// Longest time without any 2xx answer from the fault on.
    gap: Duration,
    /// Keys queued more than once, with their answer's status.
    dup_statuses: Vec<(String, u16)>,
    note: String,
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | sent | 2xx | 503 | 504 | other | lost | duplicates | 504 yet queued | first 2xx after fault | longest 2xx gap | notes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let other: usize =
            r.report.other.iter().map(|(_, n)| n).sum::<usize>() + r.report.bad_gateway;
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2?} | {:.2?} | {} |",
            r.name,
            r.report.sent,
            r.report.accepted,
            r.report.rejected,
            r.report.unknown,
            other,
            r.report.lost,
            r.report.duplicates,
            r.report.recovered,
            r.first_2xx,
            r.gap,
            r.note
        )
        .unwrap();
    }
    s
}

/// Runs one phase under [`PHASE_DEADLINE`]; on a panic or the deadline, prints the members'
/// logs and fails.
async fn bounded(name: &str, phase: impl Future<Output = Row>) -> Row {
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        PHASE_DEADLINE,
        std::panic::AssertUnwindSafe(phase).catch_unwind(),
    )
    .await;
    match outcome {
        Ok(Ok(row)) => {
            eprintln!("[{name}] done in {:.1?}", started.elapsed());
            row
        }
        Ok(Err(panic)) => {
            eprintln!(
                "[{name}] failed; members' logs:\n{}",
                cluster().await.log_tail(25)
            );
            std::panic::resume_unwind(panic)
        }
        Err(_) => panic!(
            "[{name}] not done within {PHASE_DEADLINE:?}; members' logs:\n{}",
            cluster().await.log_tail(25)
        ),
    }
}

/// a. SIGKILL the queue leader's node while the gateway's connection is on another member.
async fn leader_killed() -> Row {
    // Declared through a member other than the gateway's: the leader starts there.
    let mut p = Phase::start("a-leader-killed", |g| (g + 1) % SIZE).await;
    let mut leader = p.leader_or_panic(p.c.queue_leader(&p.queue.name).await);
    let mut restarts = 0;
    while leader == p.gw_node {
        // Not where it was declared: start the gateway again until its connection is elsewhere
        // (each start picks its first node at random).
        assert!(
            restarts < 12,
            "the gateway keeps landing on the leader n{}",
            leader + 1
        );
        restarts += 1;
        let exchange = p.queue.exchange.clone();
        let old = std::mem::replace(&mut p.gw, start_gateway(p.c, &exchange).await.0);
        old.shutdown().await;
        p.gw_node = gateway_node(p.c, &p.gw).await.unwrap();
        leader = p.leader_or_panic(p.c.queue_leader(&p.queue.name).await);
    }
    p.load().await;
    let fault = Instant::now();
    p.c.member(leader).down(true).await;
    let first = p
        .wait_accepted(fault, 1, RECOVERY, "after the leader was killed")
        .await;
    p.wait_accepted(
        fault,
        STEADY,
        RECOVERY,
        "steady after the leader was killed",
    )
    .await;
    p.observe(fault).await;
    let new_leader = p.new_leader(leader).await;
    let now_on = gateway_node(p.c, &p.gw).await;
    let note = format!(
        "leader n{} killed; gateway stayed on n{} (now {}); new leader n{}",
        leader + 1,
        p.gw_node + 1,
        now_on.map_or("-".into(), |n| format!("n{}", n + 1)),
        new_leader + 1,
    );
    p.finish(fault, first, note).await
}

/// b. SIGKILL the member the gateway is connected to.
async fn connected_node_killed() -> Row {
    let mut p = Phase::start("b-gateway-node-killed", |g| (g + 1) % SIZE).await;
    let leader = p.leader_or_panic(p.c.queue_leader(&p.queue.name).await);
    let killed = p.gw_node;
    p.load().await;
    let fault = Instant::now();
    p.c.member(killed).down(true).await;
    let first = p
        .wait_accepted(fault, 1, RECOVERY, "after the gateway's node was killed")
        .await;
    p.wait_accepted(
        fault,
        STEADY,
        RECOVERY,
        "steady after the gateway's node was killed",
    )
    .await;
    p.observe(fault).await;
    let now_on = gateway_node(p.c, &p.gw).await;
    assert_ne!(
        now_on,
        Some(killed),
        "the connection cannot be on a dead node"
    );
    let note = format!(
        "gateway's node n{} killed (leader n{}); reconnected to {}",
        killed + 1,
        leader + 1,
        now_on.map_or("-".into(), |n| format!("n{}", n + 1)),
    );
    p.finish(fault, first, note).await
}

/// c. Stop two members (quorum lost): no 2xx at all while lost; 2xx again once they are back.
async fn quorum_lost() -> Row {
    // The survivor holds the gateway's connection and the leader: writes reach a leader that
    // cannot commit.
    let mut p = Phase::start("c-quorum-lost", |g| g).await;
    let survivor = p.gw_node;
    let stopped: Vec<usize> = (0..SIZE).filter(|&i| i != survivor).collect();
    p.load().await;
    for &i in &stopped {
        p.c.member(i).down(false).await;
    }
    let lost = Instant::now();
    // Observe the lost quorum for a while: the writers keep writing.
    tokio::time::sleep(LOST_WINDOW).await;
    let restart = Instant::now();
    for &i in &stopped {
        p.c.member(i).up().await;
    }
    let back = restart.elapsed();
    let first = p
        .wait_accepted(restart, 1, RECOVERY, "after the two nodes were back")
        .await;
    p.wait_accepted(
        restart,
        STEADY,
        RECOVERY,
        "steady after the two nodes were back",
    )
    .await;

    // The rule: nothing answered while the quorum was lost is a 2xx — except the confirm of a
    // write committed before the second node went down, still on its way (sent before `lost`,
    // answered within 500 ms of it).
    let replies = p.replies();
    let in_window: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.answered_at() >= lost && r.answered_at() < restart)
        .collect();
    let late_confirms = in_window
        .iter()
        .filter(|r| {
            r.accepted() && r.sent_at < lost && r.answered_at() < lost + Duration::from_millis(500)
        })
        .count();
    let bad: Vec<&&Reply> = in_window
        .iter()
        .filter(|r| !(r.status == 503 || r.status == 504))
        .filter(|r| {
            !(r.accepted()
                && r.sent_at < lost
                && r.answered_at() < lost + Duration::from_millis(500))
        })
        .collect();
    let during =
        support::load::status_counts(&in_window.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
    assert!(
        bad.is_empty(),
        "while the quorum was lost, only 503/504 may be answered: {} others, e.g. {:?}; all: {during:?}",
        bad.len(),
        bad.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        !in_window.is_empty(),
        "no write was answered while the quorum was lost: the rule was not exercised"
    );
    let note = format!(
        "n{} and n{} stopped, gateway+leader on n{}; lost for {:.1?}: answers {during:?} \
         ({late_confirms} in-flight confirms of earlier commits); restart took {back:.1?}; \
         first 2xx measured from the restart",
        stopped[0] + 1,
        stopped[1] + 1,
        survivor + 1,
        restart - lost,
    );
    p.finish(lost, first, note).await
}

/// d. SIGSTOP the member the gateway is connected to, then SIGCONT it.
async fn connected_node_frozen() -> Row {
    let mut p = Phase::start("d-gateway-node-frozen", |g| (g + 1) % SIZE).await;
    let leader = p.leader_or_panic(p.c.queue_leader(&p.queue.name).await);
    let frozen_node = p.gw_node;
    p.load().await;
    let fault = Instant::now();
    let frozen = p.c.freeze(frozen_node);
    let first = p
        .wait_accepted(fault, 1, RECOVERY, "after the gateway's node froze")
        .await;
    p.wait_accepted(
        fault,
        STEADY,
        RECOVERY,
        "steady after the gateway's node froze",
    )
    .await;
    p.observe(fault).await;
    let now_on = gateway_node(p.c, &p.gw).await;
    let frozen_for = fault.elapsed();
    frozen.thaw();
    assert_ne!(
        now_on,
        Some(frozen_node),
        "2xx came, so not through the frozen node"
    );
    let note = format!(
        "gateway's node n{} frozen for {frozen_for:.1?} (leader n{}); reconnected to {}",
        frozen_node + 1,
        leader + 1,
        now_on.map_or("-".into(), |n| format!("n{}", n + 1)),
    );
    p.finish(fault, first, note).await
}

#[tokio::test]
async fn the_gateway_loses_nothing_when_cluster_nodes_fail() {
    let started = Instant::now();
    let c = cluster().await;
    eprintln!(
        "cluster ready after {:.1?}: {:?}",
        started.elapsed(),
        c.urls()
    );
    let rows = vec![
        bounded("a-leader-killed", leader_killed()).await,
        bounded("b-gateway-node-killed", connected_node_killed()).await,
        bounded("c-quorum-lost", quorum_lost()).await,
        bounded("d-gateway-node-frozen", connected_node_frozen()).await,
    ];
    c.heal(None, HEAL).await;
    eprintln!(
        "\ncluster fault summary ({WRITERS} writers, confirm_timeout {CONFIRM_TIMEOUT:?}, \
         heartbeat {HEARTBEAT_SECS}s, total {:.1?}):\n{}",
        started.elapsed(),
        table(&rows)
    );
    for r in &rows {
        assert_eq!(r.report.lost, 0, "[{}] accepted writes lost", r.name);
    }
}
