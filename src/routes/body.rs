//! Request bodies a handler reads whole: the size limit (declared and actual), the read
//! timeout, and `Content-Encoding: gzip` undone under the same limit.

use std::io::Read;
use std::task::Poll;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::GatewayError;

/// Refuses a body whose `Content-Length` is over `limit`, before anything reads it.
pub(crate) fn check_declared(headers: &HeaderMap, limit: usize) -> Result<(), GatewayError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    Ok(())
}

/// Whether the body is gzip (`Content-Encoding: gzip`/`x-gzip`) or as is (none or
/// `identity`); any other or more than one coding is a 415.
pub(crate) fn is_gzip(headers: &HeaderMap) -> Result<bool, GatewayError> {
    let encoding = match headers.get_all(CONTENT_ENCODING).iter().count() {
        0 => None,
        1 => headers
            .get(CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase()),
        _ => Some(String::from("multiple")),
    };
    match encoding.as_deref() {
        None | Some("identity") => Ok(false),
        Some("gzip" | "x-gzip") => Ok(true),
        Some(_) => Err(GatewayError::UnsupportedMediaType(
            "Content-Encoding must be gzip or identity".into(),
        )),
    }
}

/// Reads the body under the limit and undoes `Content-Encoding: gzip`, also under the limit.
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, GatewayError> {
    let too_large = GatewayError::PayloadTooLarge { limit };
    check_declared(headers, limit)?;
    let gzip = is_gzip(headers)?;
    // A small body usually arrived with the head: poll once before arming a timer (a timer
    // entry costs a lock on the timer wheel to register and again to cancel).
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    let collected = match futures_util::poll!(collect.as_mut()) {
        Poll::Ready(collected) => collected,
        Poll::Pending => tokio::time::timeout(timeout, collect)
            .await
            .map_err(|_| GatewayError::RequestTimeout)?,
    };
    let raw = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large),
        Err(_) => {
            return Err(GatewayError::BadRequest(
                "the request body could not be read".into(),
            ));
        }
    };
    if !gzip {
        return Ok(raw);
    }
    // Inflate at most limit + 1 bytes: one byte over proves the body is too large without ever
    // holding more than the limit (a 10 KB → 10 GB bomb stops here).
    let mut decoded = Vec::with_capacity(raw.len().saturating_mul(4).min(limit + 1));
    flate2::read::MultiGzDecoder::new(raw.as_ref())
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|_| GatewayError::BadRequest("the body is not valid gzip".into()))?;
    if decoded.len() > limit {
        return Err(too_large);
    }
    Ok(Bytes::from(decoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[tokio::test]
    async fn gzip_bomb_stops_at_the_limit() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        enc.write_all(&vec![b'a'; 4 * 1024 * 1024]).unwrap();
        let gz = enc.finish().unwrap();
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let err = read(
            &h,
            Body::from(gz),
            1024 * 1024,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, GatewayError::PayloadTooLarge { .. }));
    }
}
