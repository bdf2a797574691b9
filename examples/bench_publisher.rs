//! The write-path ceiling for `bench/run.sh`: a raw lapin publisher, no HTTP.
//!
//! `--concurrency` tasks each publish one persistent, `mandatory` message at a time and wait for
//! its confirm (like one HTTP client connection waiting for its 201), over the same
//! `connections × channels` confirm-mode channels as the gateway's `[amqp]` section, picked
//! round-robin. Prints one JSON line: messages, confirms per second and confirm latency
//! percentiles.
//!
//! ```text
//! cargo run --release --example bench_publisher -- --url amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --exchange users --routing-key user.created --concurrency 64 --duration 10s
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

#[derive(Parser)]
#[command(about = "Raw confirmed-publish ceiling for the amqp-gateway benchmarks")]
struct Args {
    /// Broker URL.
    #[arg(long)]
    url: String,
    /// Exchange to publish to (must exist and route the key to a queue).
    #[arg(long, default_value = "users")]
    exchange: String,
    /// Routing key.
    #[arg(long, default_value = "user.created")]
    routing_key: String,
    /// Concurrent publishers, each with one unconfirmed message at a time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// AMQP connections (the gateway's `amqp.connections`).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Confirm-mode channels per connection (the gateway's `amqp.channels_per_connection`).
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    warmup: Duration,
    /// Message body.
    #[arg(
        long,
        default_value = r#"{"name":"bench","email":"bench@example.com"}"#
    )]
    body: String,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration `{s}`"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("bad duration `{s}` (use 10s or 500ms)")),
    }
}

/// Properties like the gateway's (same broker work per message): persistent, ids, type, app,
/// timestamp and the two HTTP headers every event carries.
fn properties(n: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-http-method"),
        AMQPValue::LongString(LongString::from("POST")),
    );
    headers.insert(
        ShortString::from("x-http-path"),
        AMQPValue::LongString(LongString::from("/users")),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(uuid::Uuid::now_v7().to_string()))
        .with_correlation_id(ShortString::from(format!("bench-{n}")))
        .with_type(ShortString::from("user.created"))
        .with_app_id(ShortString::from("bench-publisher"))
        .with_timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .with_headers(headers)
}

/// Publishes and waits for the confirm; `Ok` only for an ack of a routed message.
async fn publish_one(args: &Args, channel: &Channel, n: u64) -> Result<(), String> {
    let confirm = channel
        .basic_publish(
            args.exchange.as_str().into(),
            args.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            args.body.as_bytes(),
            properties(n),
        )
        .await
        .map_err(|e| e.to_string())?;
    match confirm.await.map_err(|e| e.to_string())? {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("not confirmed: {other:?}")),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let mut channels = Vec::new();
    let mut connections = Vec::new();
    for i in 0..args.connections {
        let conn = Connection::connect(
            &args.url,
            ConnectionProperties::default().with_connection_name(format!("bench-{i}").into()),
        )
        .await?;
        for _ in 0..args.channels {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        connections.push(conn);
    }
    let channels = Arc::new(channels);
    let next = Arc::new(AtomicUsize::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (args, channels, next, measuring, stop, errors, seq) = (
            args.clone(),
            channels.clone(),
            next.clone(),
            measuring.clone(),
            stop.clone(),
            errors.clone(),
            seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Latencies in microseconds, measured phase only.
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let channel = &channels[next.fetch_add(1, Ordering::Relaxed) % channels.len()];
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let result = publish_one(&args, channel, n).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    match result {
                        Ok(()) => latencies
                            .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
    all.sort_unstable();
    let messages = all.len();
    println!(
        "{{\"concurrency\":{},\"connections\":{},\"channels_per_connection\":{},\"messages\":{},\"errors\":{},\"seconds\":{:.3},\"rate\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        args.concurrency,
        args.connections,
        args.channels,
        messages,
        errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        percentile(&all, 100.0),
    );
    for conn in connections {
        let _ = conn.close(200, "bench done".into()).await;
    }
    Ok(())
}
