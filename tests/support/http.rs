//! The client side of read tests: one request with arbitrary header bytes, the whole answer
//! ([`Answer`]), and HTTP dates in the three formats RFC 9110 §5.6.7 makes recipients accept.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// A client that shows the wire: no proxy, no automatic decompression (reqwest is built
/// without its decoding features), no redirects followed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One complete answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body bytes as received.
    pub body: Vec<u8>,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Answer {
    /// The status as a [`reqwest::StatusCode`] (as `reqwest::Response::status` gives it).
    pub fn status(&self) -> reqwest::StatusCode {
        reqwest::StatusCode::from_u16(self.status).unwrap()
    }

    /// The response headers (as `reqwest::Response::headers` gives them).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The first `name` field as text; `None` when absent (or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Cache`, `""` when absent.
    pub fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("")
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `"<status> <x-cache>"`, for assertion messages.
    pub fn summary(&self) -> String {
        format!("{} {}", self.status, self.x_cache())
    }
}

/// One request through `router` in process (`tower::ServiceExt::oneshot`, no socket), the
/// whole answer read.
pub async fn call(router: &axum::Router, request: http::Request<axum::body::Body>) -> Answer {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let started = std::time::Instant::now();
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// The headers of a JSON write: `Content-Type: application/json`.
pub const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// `method url` with `headers` (text values, `content-type` among them: [`JSON`]) and `body`, on a fresh
/// client: the request of the write tests.
pub async fn write(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Answer {
    send_body(
        method,
        url,
        headers.iter().map(|(k, v)| (*k, v.as_bytes())),
        body.into(),
    )
    .await
}

/// `GET url` with `headers` (text values).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(
        Method::GET,
        url,
        headers.iter().map(|(k, v)| (*k, v.as_bytes())),
    )
    .await
}

/// `method url` with `headers` given as raw bytes (obs-text allowed), on a fresh client.
pub async fn send<'a>(
    method: Method,
    url: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Answer {
    exchange(method, url, headers, None).await
}

/// [`send`] with a request body (`reqwest::Body::wrap_stream` for a chunked one).
pub async fn send_body<'a>(
    method: Method,
    url: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: reqwest::Body,
) -> Answer {
    exchange(method, url, headers, Some(body)).await
}

async fn exchange<'a>(
    method: Method,
    url: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: Option<reqwest::Body>,
) -> Answer {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let started = std::time::Instant::now();
    let mut request = client().request(method, url).headers(map);
    if let Some(body) = body {
        request = request.body(body);
    }
    let res = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// Now, shifted by `secs` (negative: the past), truncated to whole seconds.
pub fn now_plus(secs: i64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let shifted = now.checked_add_signed(secs).unwrap();
    UNIX_EPOCH + Duration::from_secs(shifted)
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const LONG_DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The calendar fields of `t` (UTC): weekday index into [`DAYS`] (0 = Thursday, the weekday of
/// 1970-01-01), year, month 1–12, day, hour, minute, second.
fn civil(t: SystemTime) -> (usize, i64, usize, u64, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = i64::try_from(days).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        usize::try_from(days % 7).unwrap(),
        year,
        usize::try_from(month).unwrap(),
        u64::try_from(day).unwrap(),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

/// IMF-fixdate, the preferred format: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(t: SystemTime) -> String {
    let (wd, y, mo, d, h, mi, s) = civil(t);
    format!(
        "{}, {d:02} {} {y:04} {h:02}:{mi:02}:{s:02} GMT",
        DAYS[wd],
        MONTHS[mo - 1]
    )
}

/// The obsolete RFC 850 format: `Sunday, 06-Nov-94 08:49:37 GMT`.
pub fn rfc850(t: SystemTime) -> String {
    let (wd, y, mo, d, h, mi, s) = civil(t);
    format!(
        "{}, {d:02}-{}-{:02} {h:02}:{mi:02}:{s:02} GMT",
        LONG_DAYS[wd],
        MONTHS[mo - 1],
        y % 100
    )
}

/// The obsolete asctime format: `Sun Nov  6 08:49:37 1994`.
pub fn asctime(t: SystemTime) -> String {
    let (wd, y, mo, d, h, mi, s) = civil(t);
    format!(
        "{} {} {d:>2} {h:02}:{mi:02}:{s:02} {y:04}",
        DAYS[wd],
        MONTHS[mo - 1]
    )
}
