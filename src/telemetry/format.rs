//! [`LineFormat`]: the event formatter. Access-log lines are written field by field with no
//! `Debug` formatting; every other event goes to tracing-subscriber's own formatter.
//!
//! Why: the access line is written once per request, and tracing-subscriber's formatter
//! spends most of its time in `core::fmt` machinery (each field through `Debug`, styled field
//! names even without colours): about a fifth of the CPU of a cache hit. The line keeps the
//! same shape as the other lines (timestamp, level, target, message, `key=value` fields in
//! text; one flat object in JSON).

use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

use super::access::{MESSAGE, TARGET};

/// Formats access-log events itself and hands the rest to `fallback`.
#[derive(Debug, Clone)]
pub(crate) struct LineFormat<F> {
    fallback: F,
    json: bool,
}

impl<F> LineFormat<F> {
    /// `json` selects the access line's shape; it must match what `fallback` writes.
    pub(crate) fn new(fallback: F, json: bool) -> Self {
        Self { fallback, json }
    }
}

impl<S, N, F> FormatEvent<S, N> for LineFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != TARGET {
            return self.fallback.format_event(ctx, writer, event);
        }
        if self.json {
            writer.write_str("{\"timestamp\":\"")?;
            timestamp(&mut writer)?;
            writer.write_str("\",\"level\":\"")?;
            writer.write_str(meta.level().as_str())?;
            writer.write_str("\",\"target\":\"")?;
            writer.write_str(TARGET)?;
            writer.write_char('"')?;
        } else {
            timestamp(&mut writer)?;
            // Right-aligned in five columns, as tracing-subscriber prints levels.
            let level = meta.level().as_str();
            for _ in level.len()..6 {
                writer.write_char(' ')?;
            }
            writer.write_str(level)?;
            writer.write_char(' ')?;
            writer.write_str(TARGET)?;
            writer.write_char(':')?;
        }
        // Every event of this target is the access line, whose message is a constant.
        if self.json {
            writer.write_str(",\"message\":\"")?;
            writer.write_str(MESSAGE)?;
            writer.write_char('"')?;
        } else {
            writer.write_char(' ')?;
            writer.write_str(MESSAGE)?;
        }
        let mut fields = Fields {
            writer: &mut writer,
            json: self.json,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(if self.json { "}\n" } else { "\n" })
    }
}

/// Writes each field as it is visited.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    json: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        // `write_str` pieces rather than `write!`: `core::fmt` costs more than the copying.
        if self.json {
            self.writer.write_str(",\"")?;
            self.writer.write_str(field.name())?;
            self.writer.write_str("\":")
        } else if field.name() == "message" {
            self.writer.write_char(' ')
        } else {
            self.writer.write_char(' ')?;
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')
        }
    }

    fn integer(&mut self, field: &Field, value: impl itoa::Integer) -> fmt::Result {
        self.key(field)?;
        self.writer.write_str(itoa::Buffer::new().format(value))
    }

    fn str_value(&mut self, field: &Field, value: &str) -> fmt::Result {
        self.key(field)?;
        if self.json {
            json_string(self.writer, value)
        } else if field.name() == "message" || is_plain(value) {
            self.writer.write_str(value)
        } else {
            // Quoted and escaped, like tracing's own text output of a string field.
            write!(self.writer, "{value:?}")
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.str_value(field, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.integer(field, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.integer(field, value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.result.is_ok() {
            self.result = self
                .key(field)
                .and_then(|()| three_decimals(self.writer, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // The message is written by `format_event` (the access module's constant).
        if self.result.is_ok() && field.name() != "message" {
            self.result = self.str_value(field, &format!("{value:?}"));
        }
    }
}

/// `value` with three decimals (latency in milliseconds to the microsecond), by integer
/// formatting: float formatting is the slowest part of `core::fmt`.
fn three_decimals(out: &mut Writer<'_>, value: f64) -> fmt::Result {
    let thousandths = (value * 1000.0).round();
    if !(0.0..1e15).contains(&thousandths) {
        return write!(out, "{value:.3}");
    }
    // In range and rounded: the conversion is exact.
    let thousandths = thousandths as u64;
    let mut digits = itoa::Buffer::new();
    out.write_str(digits.format(thousandths / 1000))?;
    out.write_char('.')?;
    let frac = thousandths % 1000;
    if frac < 100 {
        out.write_char('0')?;
    }
    if frac < 10 {
        out.write_char('0')?;
    }
    out.write_str(digits.format(frac))
}

thread_local! {
    /// The RFC 3339 date and time of the last second formatted on this thread.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Now, in RFC 3339 UTC with microseconds (the format of tracing-subscriber's timestamps):
/// the date and time part is formatted once per second per thread.
fn timestamp(out: &mut Writer<'_>) -> fmt::Result {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != since.as_secs() {
            *second = since.as_secs();
            text.clear();
            let full = humantime::format_rfc3339_seconds(now).to_string();
            text.push_str(full.trim_end_matches('Z'));
        }
        out.write_str(text)
    })?;
    out.write_char('.')?;
    let micros = since.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let formatted = digits.format(micros);
    for _ in formatted.len()..6 {
        out.write_char('0')?;
    }
    out.write_str(formatted)?;
    out.write_char('Z')
}

/// Safe to print unquoted in a `key=value` line: no spaces, quotes, `=` or control characters.
fn is_plain(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
}

/// `value` as a JSON string.
fn json_string(out: &mut Writer<'_>, value: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.write_str(&value[start..i])?;
        if escape.is_empty() {
            write!(out, "\\u{:04x}", c as u32)?;
        } else {
            out.write_str(escape)?;
        }
        start = i + c.len_utf8();
    }
    out.write_str(&value[start..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_support::Sink;

    fn access_line(json: bool) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone());
        let emit = || {
            tracing::info!(
                target: TARGET,
                method = "GET",
                path = "/users/42",
                request_id = "id \"x\"",
                status = 200u16,
                route = "get-user",
                latency_ms = 1.23456,
                "Request completed."
            );
            tracing::info!(other = 1, "Not an access line.");
        };
        if json {
            let format = tracing_subscriber::fmt::format().json().flatten_event(true);
            let subscriber = builder
                .json()
                .event_format(LineFormat::new(format, true))
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            let format = tracing_subscriber::fmt::format();
            let subscriber = builder
                .event_format(LineFormat::new(format, false))
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        }
        let bytes = sink.bytes();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_access_line_is_one_flat_object() {
        let text = access_line(true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["message"], "Request completed.");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/users/42");
        assert_eq!(v["request_id"], "id \"x\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["route"], "get-user");
        assert_eq!(v["latency_ms"], 1.235);
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        // Other events keep tracing-subscriber's JSON.
        let other: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(other["message"], "Not an access line.");
        assert_eq!(other["other"], 1);
    }

    #[test]
    fn text_access_line_is_key_value() {
        let text = access_line(false);
        let line = text.lines().next().unwrap();
        let rest = line.split_once(' ').unwrap().1;
        assert_eq!(
            rest,
            " INFO amqp_gateway::access: Request completed. method=GET path=/users/42 \
             request_id=\"id \\\"x\\\"\" status=200 route=get-user latency_ms=1.235"
        );
    }

    fn json(value: &str) -> String {
        let mut s = String::new();
        json_string(&mut Writer::new(&mut s), value).unwrap();
        s
    }

    #[test]
    fn json_strings_round_trip_through_serde_json() {
        for v in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\nline",
            "ctl\u{1}x",
            "ünïcode",
            "",
        ] {
            let encoded = json(v);
            let decoded: String = serde_json::from_str(&encoded).unwrap();
            assert_eq!(decoded, v, "{encoded}");
        }
    }

    #[test]
    fn decimals_and_timestamps_match_core_fmt() {
        for v in [
            0.0, 0.0004, 0.0005, 1.0, 1.23456, 12.3405, 999.9996, 123456.789,
        ] {
            let mut s = String::new();
            three_decimals(&mut Writer::new(&mut s), v).unwrap();
            assert_eq!(s, format!("{v:.3}"), "{v}");
        }
        let mut s = String::new();
        timestamp(&mut Writer::new(&mut s)).unwrap();
        let parsed = humantime::parse_rfc3339(&s).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() < 5, "{s}");
        assert_eq!(s.len(), "2026-11-21T18:00:00.000000Z".len(), "{s}");
    }

    #[test]
    fn plain_values_are_printed_bare_and_others_quoted() {
        assert!(is_plain("/users/42"));
        assert!(is_plain("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_plain("two words"));
        assert!(!is_plain("a=b"));
        assert!(!is_plain(""));
    }
}
