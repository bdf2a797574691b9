//! Prometheus metrics: what is counted, with which labels, and the `/metrics` text.
//!
//! The registry is built once at start-up and injected through [`crate::state::AppState`];
//! nothing is global. Labels use the route *name* from config, never the raw path, so
//! cardinality is bounded by the config. Channel-pool gauges are read from the channel set at
//! scrape time rather than updated on every change.

mod layer;

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::amqp::{Readiness, SlotState};
use crate::shared::lock;

pub(crate) use layer::RequestMetricsLayer;

/// Labels of the HTTP request metrics. Shared and static strings: recording a request
/// allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// Route name (`unmatched` for 404/405 outside any route).
    pub route: Arc<str>,
    /// HTTP method (`OTHER` for extension methods, so clients cannot add series).
    pub method: &'static str,
    /// Response status code.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteMethod {
    route: Arc<str>,
    method: &'static str,
}

/// The method as a static string (a label value, an `Allow` entry); extension methods collapse
/// into `OTHER`.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOutcome {
    route: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcome {
    upstream: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelState {
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s: covers cache hits and broker fsync-bound confirms alike.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the gateway exports.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteMethod, Histogram, fn() -> Histogram>,
    publishes: Family<RouteOutcome, Counter>,
    confirm_duration: Histogram,
    cache: Family<RouteOutcome, Counter>,
    upstream: Family<UpstreamOutcome, Counter>,
    channels: Family<ChannelState, Gauge>,
    reloads: Family<ReloadResult, Counter>,
    connections: Family<NodeLabel, Gauge>,
    /// Every node a connection was ever counted on, so a node that lost all of them reads 0.
    nodes_seen: std::sync::Mutex<std::collections::BTreeSet<Arc<str>>>,
    rate_limited: Family<RouteOnly, Counter>,
    cache_coherent: Gauge,
    invalidations: Family<Outcome, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `gateway_` prefix.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteMethod, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency until the response head",
            request_duration.clone(),
        );
        let publishes = Family::<RouteOutcome, Counter>::default();
        registry.register("publishes", "Publishes by route and outcome (acked, unroutable, nacked, unavailable, blocked, unknown, too_large, internal)", publishes.clone());
        let confirm_duration = latency_histogram();
        registry.register(
            "publish_confirm_duration_seconds",
            "Time from publish to the broker's confirm, acked publishes only",
            confirm_duration.clone(),
        );
        let cache = Family::<RouteOutcome, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache results on cached read routes (hit, miss, revalidated, stale, bypass)",
            cache.clone(),
        );
        let upstream = Family::<UpstreamOutcome, Counter>::default();
        registry.register(
            "upstream_requests",
            "Upstream exchanges by upstream and outcome (ok, unreachable, failed, timeout)",
            upstream.clone(),
        );
        let channels = Family::<ChannelState, Gauge>::default();
        registry.register(
            "amqp_channels",
            "Publishing channels by state (ready, blocked, configured)",
            channels.clone(),
        );
        let reloads = Family::<ReloadResult, Counter>::default();
        registry.register(
            "config_reload",
            "Config reloads (SIGHUP, POST /reload) by result (ok, error)",
            reloads.clone(),
        );
        let rate_limited = Family::<RouteOnly, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by a route's rate limits (nothing published or proxied)",
            rate_limited.clone(),
        );
        let connections = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "amqp_connections",
            "Publishing connections by broker node (host:port)",
            connections.clone(),
        );
        let cache_coherent = Gauge::default();
        registry.register(
            "cache_coherent",
            "1 while the cache may serve: the invalidation subscription is up, or cache.coherence is off; 0 while it is bypassed",
            cache_coherent.clone(),
        );
        let invalidations = Family::<Outcome, Counter>::default();
        registry.register(
            "cache_invalidations",
            "Cache invalidations between instances by outcome (sent, unrouted, failed, received, unreadable)",
            invalidations.clone(),
        );
        Self {
            cache_coherent,
            invalidations,
            connections,
            nodes_seen: std::sync::Mutex::default(),
            rate_limited,
            reloads,
            registry,
            requests,
            request_duration,
            publishes,
            confirm_duration,
            cache,
            upstream,
            channels,
        }
    }

    /// Records one HTTP response.
    pub(crate) fn request(
        &self,
        route: &Arc<str>,
        method: &Method,
        status: u16,
        latency: Duration,
    ) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteMethod {
                route: route.clone(),
                method,
            })
            .observe(latency.as_secs_f64());
    }

    /// Records a publish outcome; `confirm` is the publish-to-ack time of an acked publish.
    pub(crate) fn publish(
        &self,
        route: &Arc<str>,
        outcome: &'static str,
        confirm: Option<Duration>,
    ) {
        self.publishes
            .get_or_create(&RouteOutcome {
                route: route.clone(),
                outcome,
            })
            .inc();
        if let Some(d) = confirm {
            self.confirm_duration.observe(d.as_secs_f64());
        }
    }

    /// Records a cache result on a cached route.
    pub(crate) fn cache(&self, route: &Arc<str>, result: &'static str) {
        self.cache
            .get_or_create(&RouteOutcome {
                route: route.clone(),
                outcome: result,
            })
            .inc();
    }

    /// Records a config reload: `ok` or `error`.
    pub(crate) fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadResult { result }).inc();
    }

    /// Records a request refused by one of the route's rate limits.
    pub(crate) fn rate_limited(&self, route: &Arc<str>) {
        self.rate_limited
            .get_or_create(&RouteOnly {
                route: route.clone(),
            })
            .inc();
    }

    /// Records an invalidation sent to or received from the other instances: `sent`,
    /// `unrouted` (no instance subscribed), `failed`, `received`, `unreadable`.
    pub(crate) fn invalidation(&self, outcome: &'static str) {
        self.invalidations.get_or_create(&Outcome { outcome }).inc();
    }

    /// Sets `gateway_cache_coherent` (read at scrape time).
    pub(crate) fn set_cache_coherent(&self, coherent: bool) {
        self.cache_coherent.set(i64::from(coherent));
    }

    /// Records an upstream exchange outcome.
    pub(crate) fn upstream(&self, upstream: &Arc<str>, outcome: &'static str) {
        self.upstream
            .get_or_create(&UpstreamOutcome {
                upstream: upstream.clone(),
                outcome,
            })
            .inc();
    }

    /// The Prometheus text exposition, with channel gauges taken from `readiness` now.
    pub(crate) fn render(&self, readiness: Readiness, slots: &[SlotState]) -> String {
        // Connections per node, recounted now; nodes no slot is on read 0 once seen.
        let mut per_node: std::collections::BTreeMap<Arc<str>, i64> =
            std::collections::BTreeMap::new();
        for node in slots.iter().filter_map(|s| s.node.clone()) {
            *per_node.entry(node).or_default() += 1;
        }
        let mut seen = lock(&self.nodes_seen);
        seen.extend(per_node.keys().cloned());
        for node in seen.iter() {
            self.connections
                .get_or_create(&NodeLabel { node: node.clone() })
                .set(per_node.get(node).copied().unwrap_or(0));
        }
        drop(seen);
        let set = |state, n: usize| {
            self.channels
                .get_or_create(&ChannelState { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("ready", readiness.ready_channels);
        set("blocked", readiness.blocked_channels);
        set("configured", readiness.configured_channels);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_values() {
        let m = Metrics::new();
        m.request(
            &Arc::from("get-user"),
            &Method::GET,
            200,
            Duration::from_millis(3),
        );
        m.request(
            &Arc::from("get-user"),
            &Method::from_bytes(b"BREW").unwrap(),
            405,
            Duration::ZERO,
        );
        let create: Arc<str> = Arc::from("create-user");
        m.publish(&create, "acked", Some(Duration::from_millis(2)));
        m.publish(&create, "unroutable", None);
        m.cache(&Arc::from("get-user"), "hit");
        m.upstream(&Arc::from("users"), "ok");
        m.invalidation("sent");
        m.set_cache_coherent(true);
        let node = |n: Option<&str>| SlotState {
            node: n.map(Arc::from),
            ready_channels: 1,
        };
        let text = m.render(
            Readiness {
                ready_channels: 3,
                configured_channels: 4,
                blocked_channels: 1,
            },
            &[
                node(Some("n1:5672")),
                node(Some("n1:5672")),
                node(Some("n2:5672")),
                node(None),
            ],
        );
        for line in [
            "gateway_http_requests_total{route=\"get-user\",method=\"GET\",status=\"200\"} 1",
            // Extension methods share one series: clients cannot add label values.
            "gateway_http_requests_total{route=\"get-user\",method=\"OTHER\",status=\"405\"} 1",
            "gateway_publishes_total{route=\"create-user\",outcome=\"acked\"} 1",
            "gateway_publishes_total{route=\"create-user\",outcome=\"unroutable\"} 1",
            "gateway_publish_confirm_duration_seconds_count 1",
            "gateway_cache_lookups_total{route=\"get-user\",outcome=\"hit\"} 1",
            "gateway_upstream_requests_total{upstream=\"users\",outcome=\"ok\"} 1",
            "gateway_amqp_channels{state=\"ready\"} 3",
            "gateway_amqp_connections{node=\"n1:5672\"} 2",
            "gateway_amqp_connections{node=\"n2:5672\"} 1",
            "gateway_amqp_channels{state=\"blocked\"} 1",
            "gateway_cache_invalidations_total{outcome=\"sent\"} 1",
            "gateway_cache_coherent 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
