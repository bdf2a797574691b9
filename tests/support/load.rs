//! Owns the write side of fault tests: [`post_event`] (one write, timed, with what the answer
//! said), [`Writers`] (N concurrent clients posting events with unique keys until stopped, every
//! answer recorded in a [`Ledger`]), and the drain-and-count check ([`DrainReport`]) that
//! compares the ledger with what a queue holds afterwards.
//!
//! Every event carries a unique key as both `Idempotency-Key` and `X-Request-Id`; the gateway
//! puts the request id in `correlation_id`, which is how a queued message is traced back to the
//! request that sent it (and its `message_id` must be the `event_id` a 2xx answer gave).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::message::Delivery;

/// Client-side timeout for one write: far above any bound the tests assert, so that a hung
/// request shows up as a recorded failure (status 0) with its latency, not as a hung test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for tests: no proxy from the environment, bounded requests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap()
}

/// One answer to a write.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The unique key sent as `Idempotency-Key` and `X-Request-Id`.
    pub key: String,
    /// HTTP status; 0 when no HTTP answer came (connection error, client timeout).
    pub status: u16,
    /// When the request was sent.
    pub sent_at: Instant,
    /// Time from sending to the complete answer.
    pub latency: Duration,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
    /// Last part of the problem `type` (`broker-unavailable`, ...), if the body is a problem.
    pub problem: Option<String>,
    /// `event_id` of a 2xx body.
    pub event_id: Option<String>,
    /// Transport error text when `status == 0`.
    pub error: Option<String>,
}

impl Reply {
    /// 2xx: the gateway says the broker confirmed the event.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// When the answer (or the transport error) came.
    pub fn answered_at(&self) -> Instant {
        self.sent_at + self.latency
    }
}

/// POSTs a small JSON event to `url` with `key` as `Idempotency-Key` and `X-Request-Id`.
pub async fn post_event(client: &reqwest::Client, url: &str, key: &str) -> Reply {
    let started = Instant::now();
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header("x-request-id", key)
        .body(format!(r#"{{"key":"{key}"}}"#))
        .send()
        .await;
    let mut reply = Reply {
        key: key.to_owned(),
        status: 0,
        sent_at: started,
        latency: Duration::ZERO,
        retry_after: None,
        problem: None,
        event_id: None,
        error: None,
    };
    match sent {
        Ok(response) => {
            reply.status = response.status().as_u16();
            reply.retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match response.json::<serde_json::Value>().await {
                Ok(body) => {
                    reply.problem = body["type"]
                        .as_str()
                        .and_then(|t| t.rsplit(':').next())
                        .map(str::to_owned);
                    reply.event_id = body["event_id"].as_str().map(str::to_owned);
                }
                Err(e) => reply.error = Some(format!("body: {e}")),
            }
        }
        Err(e) => reply.error = Some(e.to_string()),
    }
    reply.latency = started.elapsed();
    reply
}

/// Every answer of a load run.
#[derive(Debug, Default)]
pub struct Ledger {
    replies: Mutex<Vec<Reply>>,
}

impl Ledger {
    /// Records one answer.
    pub fn record(&self, reply: Reply) {
        self.replies.lock().unwrap().push(reply);
    }

    /// A copy of every answer so far.
    pub fn replies(&self) -> Vec<Reply> {
        self.replies.lock().unwrap().clone()
    }
}

/// N concurrent clients, each posting events with fresh keys back to back until
/// [`Writers::stop`].
pub struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What they got.
    pub ledger: Arc<Ledger>,
}

impl Writers {
    /// Starts `clients` writers; client `c` posts to `url(c, n)` for its `n`-th event with key
    /// `{prefix}-{c}-{n}`, and pauses `pause` between events.
    pub fn start(
        clients: usize,
        prefix: &str,
        pause: Duration,
        url: impl Fn(usize, u64) -> String + Send + Sync + 'static,
    ) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Ledger::default());
        let url = Arc::new(url);
        let tasks = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let ledger = ledger.clone();
                let url = url.clone();
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let client = client();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}-{c}-{n}");
                        ledger.record(post_event(&client, &url(c, n), &key).await);
                        n += 1;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            tasks,
            ledger,
        }
    }

    /// Stops the writers and waits for their last answers; returns every answer.
    pub async fn stop(self) -> Vec<Reply> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.ledger.replies()
    }
}

/// The drain-and-count check: what was answered against what the queue holds.
#[derive(Debug, Default)]
pub struct DrainReport {
    /// Writes sent.
    pub sent: usize,
    /// Answered 2xx (the broker confirmed them).
    pub accepted: usize,
    /// Answered 503: rejected, nothing enqueued.
    pub rejected: usize,
    /// Answered 504: outcome unknown.
    pub unknown: usize,
    /// Answered 502: only from a proxy in front (an instance died with the request); like
    /// 504, the outcome is unknown.
    pub bad_gateway: usize,
    /// Any other answer (or none): `(status, count)`.
    pub other: Vec<(u16, usize)>,
    /// Messages drained from the queue.
    pub drained: usize,
    /// Distinct keys among them.
    pub found: usize,
    /// Accepted but not in the queue. Must be 0.
    pub lost: usize,
    /// Keys seen more than once in the queue.
    pub duplicates: usize,
    /// Answered 504 or 502 (unknown) and in the queue anyway.
    pub recovered: usize,
    /// Answered 503 (rejected) and in the queue anyway: a broken promise, must be 0.
    pub rejected_but_found: usize,
    /// In the queue but never sent, or without a key.
    pub unexpected: usize,
    /// Accepted with an `event_id` that is not the queued message's `message_id`.
    pub id_mismatches: usize,
    /// Slowest answer.
    pub max_latency: Duration,
    /// Some lost keys, for the failure message.
    pub lost_sample: Vec<String>,
}

impl DrainReport {
    /// Compares `replies` with the `drained` messages (matched on `correlation_id` = key).
    pub fn new(replies: &[Reply], drained: &[Delivery]) -> DrainReport {
        let mut r = DrainReport {
            sent: replies.len(),
            drained: drained.len(),
            ..DrainReport::default()
        };
        let mut other: HashMap<u16, usize> = HashMap::new();
        let by_key: HashMap<&str, &Reply> = replies.iter().map(|x| (x.key.as_str(), x)).collect();
        for reply in replies {
            match reply.status {
                200..=299 => r.accepted += 1,
                503 => r.rejected += 1,
                504 => r.unknown += 1,
                502 => r.bad_gateway += 1,
                s => *other.entry(s).or_default() += 1,
            }
            r.max_latency = r.max_latency.max(reply.latency);
        }
        r.other = other.into_iter().collect();
        r.other.sort_unstable();

        let mut seen: HashMap<String, usize> = HashMap::new();
        for d in drained {
            let key = d
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str().to_owned());
            let Some(key) = key.filter(|k| by_key.contains_key(k.as_str())) else {
                r.unexpected += 1;
                continue;
            };
            let reply = by_key[key.as_str()];
            if let Some(event_id) = &reply.event_id {
                let message_id = d.properties.message_id().as_ref().map(|s| s.as_str());
                if message_id != Some(event_id.as_str()) {
                    r.id_mismatches += 1;
                }
            }
            *seen.entry(key).or_default() += 1;
        }
        r.found = seen.len();
        r.duplicates = seen.values().filter(|n| **n > 1).count();
        for reply in replies {
            let found = seen.contains_key(&reply.key);
            match reply.status {
                200..=299 if !found => {
                    r.lost += 1;
                    if r.lost_sample.len() < 10 {
                        r.lost_sample.push(reply.key.clone());
                    }
                }
                503 if found => r.rejected_but_found += 1,
                502 | 504 if found => r.recovered += 1,
                _ => {}
            }
        }
        r
    }

    /// Panics unless nothing accepted was lost, nothing rejected was queued, every queued
    /// message was sent, and every answer was 2xx, 503 or 504 (the gateway's own answers).
    pub fn assert_sound(&self) {
        assert_eq!(
            self.bad_gateway, 0,
            "the gateway never answers a write 502: {self}"
        );
        self.assert_sound_behind_proxy();
    }

    /// [`DrainReport::assert_sound`], but 502 (a proxy's answer when an instance died with
    /// the request) is allowed too.
    pub fn assert_sound_behind_proxy(&self) {
        assert_eq!(self.lost, 0, "accepted writes lost: {self}");
        assert_eq!(
            self.rejected_but_found, 0,
            "writes answered 503 (nothing enqueued) are in the queue: {self}"
        );
        assert_eq!(self.unexpected, 0, "messages nobody sent: {self}");
        assert_eq!(self.id_mismatches, 0, "event_id != message_id: {self}");
        assert!(
            self.other.is_empty(),
            "answers other than 2xx/502/503/504: {self}"
        );
        assert!(self.accepted > 0, "nothing was accepted at all: {self}");
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} accepted={} rejected(503)={} unknown(504)={} bad_gateway(502)={} other={:?} \
             | drained={} \
             found={} lost={} duplicates={} recovered={} rejected_but_found={} unexpected={} \
             id_mismatches={} | max_latency={:?}",
            self.sent,
            self.accepted,
            self.rejected,
            self.unknown,
            self.bad_gateway,
            self.other,
            self.drained,
            self.found,
            self.lost,
            self.duplicates,
            self.recovered,
            self.rejected_but_found,
            self.unexpected,
            self.id_mismatches,
            self.max_latency,
        )?;
        if !self.lost_sample.is_empty() {
            write!(f, " lost keys (first 10): {:?}", self.lost_sample)?;
        }
        Ok(())
    }
}

/// Keys answered with each status, for failure messages: `{status: count}`.
pub fn status_counts(replies: &[Reply]) -> Vec<(u16, usize)> {
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for r in replies {
        *counts.entry(r.status).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_unstable();
    v
}

/// Distinct keys of `replies`, to check a test sent what it thinks it sent.
pub fn keys(replies: &[Reply]) -> HashSet<&str> {
    replies.iter().map(|r| r.key.as_str()).collect()
}
