//! Example consumer for the events `amqp-gateway` publishes.
//!
//! It connects to RabbitMQ, declares the exchange (durable; idempotent, so it does not matter
//! whether the gateway or this consumer starts first), declares a durable queue, binds it with
//! one or more binding keys, then prints every event it receives as a readable block — routing
//! key, exchange, every AMQP property, every header, and the body (pretty-printed when it is
//! JSON) — and acknowledges it only after printing.
//!
//! ```text
//! cargo run --example consumer -- --url amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --exchange users --binding 'user.#' [--queue demo.users-events] [--count N]
//! ```
//!
//! * `--url` falls back to the `AMQP_URL` environment variable, then to the local default.
//! * Once the queue is bound it prints a line starting with `consumer: ready` (on stdout);
//!   `scripts/demo.sh` waits for that line before it sends the first request. It is printed
//!   again after every reconnect.
//! * `--count N` exits (status 0) after N messages have been printed and acknowledged.
//! * When the connection drops (broker restart, `rabbitmqctl close_connection`, network), it
//!   reconnects with exponential backoff (0.5 s doubling up to `--max-backoff`) and declares
//!   everything again. Configuration errors the broker reports while setting up (access
//!   refused, exchange declared with another type, …) are fatal: retrying would not help.
//! * SIGINT/SIGTERM close the connection cleanly; a message being printed is acknowledged
//!   first, unacknowledged ones go back to the queue.
//!
//! Diagnostics go to stderr, events to stdout.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use tokio::sync::watch;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// Prints the events `amqp-gateway` publishes, one readable block per message.
#[derive(Parser, Debug)]
#[command(name = "consumer")]
struct Args {
    /// AMQP URL [env: AMQP_URL] [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long)]
    url: Option<String>,
    /// Exchange to bind to (declared durable when missing).
    #[arg(long, default_value = "users")]
    exchange: String,
    /// Type of the exchange; must match the gateway's config.
    #[arg(long, default_value = "topic", value_parser = ["topic", "direct", "fanout", "headers"])]
    exchange_type: String,
    /// Binding key; repeat for several (topic wildcards: `*` one word, `#` zero or more).
    #[arg(long = "binding", value_name = "KEY", default_value = "#")]
    bindings: Vec<String>,
    /// Durable queue to declare, bind and consume from.
    #[arg(long, default_value = "demo.users-events")]
    queue: String,
    /// Declare the queue as a quorum queue (replicated; what production should use).
    #[arg(long)]
    quorum: bool,
    /// Exit after this many messages have been printed and acknowledged.
    #[arg(long)]
    count: Option<u64>,
    /// Unacknowledged messages the broker may push ahead (basic.qos prefetch).
    #[arg(long, default_value_t = 16)]
    prefetch: u16,
    /// Upper bound of the reconnect backoff, in seconds.
    #[arg(long, default_value_t = 30)]
    max_backoff: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a session (one connection) ended.
enum SessionEnd {
    /// `--count` messages were consumed.
    CountReached,
    /// SIGINT/SIGTERM.
    Shutdown,
}

/// A failed session: whether it is worth reconnecting, and why it failed.
struct SessionError {
    fatal: bool,
    /// The queue had been bound before the failure (resets the backoff).
    was_ready: bool,
    message: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("AMQP_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = shutdown_tx.send(true);
    });

    match run(&args, &url, shutdown_rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects, consumes, and reconnects with backoff until done, stopped or a fatal error.
async fn run(args: &Args, url: &str, mut shutdown: watch::Receiver<bool>) -> Result<(), BoxError> {
    let max_backoff = Duration::from_secs(args.max_backoff.max(1));
    let mut backoff = INITIAL_BACKOFF;
    let mut seen: u64 = 0;
    loop {
        if *shutdown.borrow() {
            eprintln!("consumer: stopped after {seen} message(s)");
            return Ok(());
        }
        eprintln!("consumer: connecting to {}", redact(url));
        match session(args, url, &mut seen, shutdown.clone()).await {
            Ok(SessionEnd::CountReached) => {
                eprintln!("consumer: received {seen} message(s), exiting");
                return Ok(());
            }
            Ok(SessionEnd::Shutdown) => {
                eprintln!("consumer: stopped after {seen} message(s)");
                return Ok(());
            }
            Err(e) if e.fatal => return Err(e.message.into()),
            Err(e) => {
                if e.was_ready {
                    backoff = INITIAL_BACKOFF;
                }
                eprintln!(
                    "consumer: {}; reconnecting in {} ms",
                    e.message,
                    backoff.as_millis()
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

/// One connection's lifetime: set up the topology, then print and ack until it ends.
async fn session(
    args: &Args,
    url: &str,
    seen: &mut u64,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let setup_failed = |what: &str, e: lapin::Error| SessionError {
        fatal: is_config_error(&e),
        was_ready: false,
        message: format!("{what}: {e}"),
    };

    let props = ConnectionProperties::default()
        .with_connection_name(format!("amqp-gateway example consumer ({})", args.queue).into());
    let conn = tokio::select! {
        r = Connection::connect(url, props) => r.map_err(|e| setup_failed("connect", e))?,
        _ = shutdown.wait_for(|stop| *stop) => return Ok(SessionEnd::Shutdown),
    };
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| setup_failed("open channel", e))?;

    let kind = match args.exchange_type.as_str() {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Topic,
    };
    if !args.exchange.is_empty() {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                args.exchange.as_str().into(),
                kind,
                opts,
                FieldTable::default(),
            )
            .await
            .map_err(|e| setup_failed(&format!("declare exchange {:?}", args.exchange), e))?;
    }

    let mut queue_args = FieldTable::default();
    if args.quorum {
        queue_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            args.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            queue_args,
        )
        .await
        .map_err(|e| setup_failed(&format!("declare queue {:?}", args.queue), e))?;
    // The default exchange ("") binds every queue by its name; explicit binds are refused.
    if !args.exchange.is_empty() {
        for key in &args.bindings {
            channel
                .queue_bind(
                    args.queue.as_str().into(),
                    args.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| setup_failed(&format!("bind {:?}", key), e))?;
        }
    }

    // Never let the broker push more than the messages still wanted: with `--count`, extra
    // deliveries would only be requeued (and marked redelivered) when we close.
    let remaining = args.count.map(|c| c.saturating_sub(*seen));
    if remaining == Some(0) {
        close(&conn).await;
        return Ok(SessionEnd::CountReached);
    }
    let prefetch = match remaining {
        Some(r) => u16::try_from(r)
            .unwrap_or(u16::MAX)
            .min(args.prefetch.max(1)),
        None => args.prefetch.max(1),
    };
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| setup_failed("basic.qos", e))?;
    let tag = format!("example-consumer-{}", std::process::id());
    let mut consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| setup_failed("basic.consume", e))?;

    let bindings = if args.exchange.is_empty() {
        "(default exchange)".to_owned()
    } else {
        args.bindings
            .iter()
            .map(|b| format!("{b:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say(&format!(
        "consumer: ready: queue {:?} bound to exchange {:?} with {bindings}; waiting for events (Ctrl-C to stop)",
        args.queue, args.exchange
    ));

    let dropped = |message: String| SessionError {
        fatal: false,
        was_ready: true,
        message,
    };
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = shutdown.wait_for(|stop| *stop) => {
                close(&conn).await;
                return Ok(SessionEnd::Shutdown);
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(dropped(format!("connection lost: {e}"))),
            None => return Err(dropped("consumer cancelled by the broker".to_owned())),
        };
        *seen += 1;
        say(&render(*seen, &delivery));
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| dropped(format!("ack failed: {e}")))?;
        if args.count.is_some_and(|c| *seen >= c) {
            close(&conn).await;
            return Ok(SessionEnd::CountReached);
        }
    }
}

/// Broker answers that reconnecting will not change: wrong credentials or permissions,
/// missing vhost, an existing exchange/queue with other arguments.
fn is_config_error(e: &lapin::Error) -> bool {
    match e.kind() {
        // 403 ACCESS_REFUSED, 404 NOT_FOUND, 406 PRECONDITION_FAILED, 530 NOT_ALLOWED
        ErrorKind::ProtocolError(amqp) => matches!(amqp.get_id(), 403 | 404 | 406 | 530),
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => true,
        _ => false,
    }
}

async fn close(conn: &Connection) {
    if let Err(e) = conn.close(200, "bye".into()).await {
        eprintln!("consumer: closing the connection: {e}");
    }
}

/// Writes one block to stdout in a single call and flushes (stdout is often a pipe here).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; never, if no handler can be installed.
async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Hides the password of `amqp://user:password@host/vhost`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Formats one delivery as a readable block.
fn render(n: u64, d: &Delivery) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "===== event #{n} {}", "=".repeat(50));
    let _ = writeln!(s, "routing key     {}", d.routing_key);
    let exchange = d.exchange.as_str();
    let _ = writeln!(
        s,
        "exchange        {}",
        if exchange.is_empty() {
            "(default)"
        } else {
            exchange
        }
    );
    if d.redelivered {
        let _ = writeln!(s, "redelivered     true");
    }
    let _ = writeln!(s, "properties");
    render_properties(&mut s, &d.properties);
    match d.properties.headers() {
        Some(headers) if !headers.inner().is_empty() => {
            let _ = writeln!(s, "headers");
            let width = headers
                .inner()
                .keys()
                .map(|k| k.as_str().len())
                .max()
                .unwrap_or(0)
                .max(14); // line up with the properties' values
            for (k, v) in headers {
                let _ = writeln!(s, "  {:<width$}  {}", k.as_str(), value_to_string(v));
            }
        }
        _ => {
            let _ = writeln!(s, "headers         (none)");
        }
    }
    render_body(&mut s, &d.properties, &d.data);
    let _ = write!(s, "{}", "=".repeat(65));
    s
}

fn render_properties(s: &mut String, p: &BasicProperties) {
    let mut prop = |name: &str, value: Option<String>| {
        let _ = writeln!(
            s,
            "  {name:<16}{}",
            value.unwrap_or_else(|| "(not set)".to_owned())
        );
    };
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|v| v.to_string());
    prop(
        "delivery_mode",
        p.delivery_mode().map(|m| match m {
            2 => "2 (persistent)".to_owned(),
            1 => "1 (transient)".to_owned(),
            m => m.to_string(),
        }),
    );
    prop("content_type", text(p.content_type()));
    prop("message_id", text(p.message_id()));
    prop("correlation_id", text(p.correlation_id()));
    prop(
        "timestamp",
        p.timestamp().map(|t| format!("{} ({t})", rfc3339(t))),
    );
    prop("type", text(p.kind()));
    prop("app_id", text(p.app_id()));
    // The rest only when present.
    let optional = [
        ("content_encoding", text(p.content_encoding())),
        ("priority", p.priority().map(|v| v.to_string())),
        ("reply_to", text(p.reply_to())),
        ("expiration", text(p.expiration())),
        ("user_id", text(p.user_id())),
        ("cluster_id", text(p.cluster_id())),
    ];
    for (name, value) in optional {
        if value.is_some() {
            prop(name, value);
        }
    }
}

fn render_body(s: &mut String, p: &BasicProperties, body: &[u8]) {
    let content_type = p
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    let _ = writeln!(s, "body ({} bytes)", body.len());
    if body.is_empty() {
        let _ = writeln!(s, "  (empty)");
        return;
    }
    // JSON by content type (application/json, application/*+json) or by sniffing.
    let looks_json = content_type.contains("json")
        || matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        );
    if looks_json
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Ok(pretty) = serde_json::to_string_pretty(&value)
    {
        for line in pretty.lines() {
            let _ = writeln!(s, "  {line}");
        }
        return;
    }
    match std::str::from_utf8(body) {
        Ok(text) => {
            for line in text.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        Err(_) => {
            const PREVIEW: usize = 64;
            let _ = writeln!(
                s,
                "  (binary) {}{}",
                hex(&body[..body.len().min(PREVIEW)]),
                if body.len() > PREVIEW { " …" } else { "" }
            );
        }
    }
}

fn value_to_string(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => bytes_to_string(s.as_bytes()),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => format!("{} (scale {})", d.value, d.scale),
        AMQPValue::Timestamp(t) => format!("{} ({t})", rfc3339(*t)),
        AMQPValue::ByteArray(b) => format!("bytes {}", hex(b.as_slice())),
        AMQPValue::FieldArray(a) => format!(
            "[{}]",
            a.as_slice()
                .iter()
                .map(value_to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::FieldTable(t) => format!(
            "{{{}}}",
            t.into_iter()
                .map(|(k, v)| format!("{}: {}", k.as_str(), value_to_string(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::Void => "(void)".to_owned(),
    }
}

/// UTF-8 text as is; anything else as hex, so that nothing is silently mangled.
fn bytes_to_string(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("(not UTF-8) {}", hex(b)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2025-01-31T12:00:00Z`), without a date
/// crate: days-to-civil conversion from Howard Hinnant's `chrono`-compatible algorithms.
fn rfc3339(secs: u64) -> String {
    // Beyond year 9999 RFC 3339 has no representation; the AMQP timestamp is in seconds,
    // so such a value was most likely sent in milliseconds.
    if secs >= 253_402_300_800 {
        return "(out of range: milliseconds?)".to_owned();
    }
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}
