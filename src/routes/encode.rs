//! gzip and zstd for complete response bodies with reused, per-thread encoders.
//!
//! tower-http's compression builds a new encoder for every response: for deflate that is a
//! ~300 KB state allocated and zeroed per response, which cost more than compressing a 2 KB
//! JSON body itself (bench/, BENCHMARKS.md); for zstd a new compression context. A body the
//! gateway already holds in full is encoded here instead, with one encoder per coding and
//! worker thread, reset between responses. Only where the outcome is certain to be the same
//! coding: tower-http's negotiation must pick it for the `Accept-Encoding` value (checked by
//! [`picks_gzip`], [`picks_zstd`]) and its predicate must allow compression (checked by the
//! caller). Everything else (br, q-values, `*`, streamed bodies) still goes through tower-http.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use http::HeaderValue;

/// Same level as tower-http's `CompressionLevel::Default` for gzip (flate2's default, 6), so
/// the fast path sends the same size of body as the general path.
const GZIP_LEVEL: u32 = 6;
/// deflate window: 2^15 bytes, the gzip default.
const WINDOW_BITS: u8 = 15;

/// tower-http's `CompressionLevel::Default` for zstd (zstd's own default, 3; below 17, so
/// tower-http sets no window limit either).
const ZSTD_LEVEL: i32 = zstd::DEFAULT_COMPRESSION_LEVEL;

thread_local! {
    static GZIP: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// True when tower-http's negotiation is certain to choose zstd for this `Accept-Encoding`:
/// zstd is listed and no q-value or `*` is given. Without q-values every listed coding has
/// q=1 and tower-http breaks the tie by its own order, in which zstd comes last and wins
/// (browsers send `gzip, deflate, br, zstd`).
pub(crate) fn picks_zstd(accept_encoding: &HeaderValue) -> bool {
    let Ok(value) = accept_encoding.to_str() else {
        return false;
    };
    if value.contains(';') {
        return false;
    }
    let mut zstd = false;
    for token in value.split(',').map(str::trim) {
        if token == "*" {
            return false;
        }
        zstd |= token.eq_ignore_ascii_case("zstd");
    }
    zstd
}

/// `body` as one zstd frame (RFC 8878), or `None` if the encoder failed.
pub(crate) fn zstd(body: &[u8]) -> Option<Bytes> {
    ZSTD.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?);
        }
        let encoder = slot.as_mut()?;
        // Each call starts a new frame on the kept context (parameters stay, state resets).
        match encoder.compress(body) {
            Ok(out) => Some(Bytes::from(out)),
            Err(_) => {
                *slot = None;
                None
            }
        }
    })
}

/// True when tower-http's negotiation is certain to choose gzip for this `Accept-Encoding`:
/// gzip (or x-gzip) is listed, no q-value is given, and neither br, zstd nor `*` (which would
/// win or change the choice) is listed. Unknown codings are ignored, as tower-http does.
pub(crate) fn picks_gzip(accept_encoding: &HeaderValue) -> bool {
    let Ok(value) = accept_encoding.to_str() else {
        return false;
    };
    if value.contains(';') {
        return false;
    }
    let mut gzip = false;
    for token in value.split(',').map(str::trim) {
        if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            gzip = true;
        } else if token.eq_ignore_ascii_case("br")
            || token.eq_ignore_ascii_case("zstd")
            || token == "*"
        {
            return false;
        }
    }
    gzip
}

/// True when tower-http's negotiation is certain to choose no coding for this value: no q-value
/// (which could refuse identity, for a 406) and no gzip, x-gzip, br, zstd or `*` listed, e.g.
/// `identity`, which some HTTP libraries send by default.
pub(crate) fn picks_identity(accept_encoding: &HeaderValue) -> bool {
    let Ok(value) = accept_encoding.to_str() else {
        return false;
    };
    !value.contains(';')
        && value.split(',').map(str::trim).all(|token| {
            !(token.eq_ignore_ascii_case("gzip")
                || token.eq_ignore_ascii_case("x-gzip")
                || token.eq_ignore_ascii_case("br")
                || token.eq_ignore_ascii_case("zstd")
                || token == "*")
        })
}

/// Whether this `Accept-Encoding` lets the gateway pick a coding it has (gzip, br, zstd, or
/// `*`) with a non-zero weight; tower-http's negotiation then encodes a compressible body.
pub(crate) fn accepts_coding(accept_encoding: &HeaderValue) -> bool {
    accept_encoding
        .as_bytes()
        .split(|b| *b == b',')
        .any(|member| {
            let mut parts = member.split(|b| *b == b';').map(<[u8]>::trim_ascii);
            let coding = parts.next().unwrap_or_default();
            let known = [&b"gzip"[..], b"x-gzip", b"br", b"zstd", b"*"]
                .iter()
                .any(|c| coding.eq_ignore_ascii_case(c));
            let refused = parts.any(|p| {
                p.len() > 2
                    && p[..2].eq_ignore_ascii_case(b"q=")
                    && p[2..].iter().all(|b| *b == b'0' || *b == b'.')
            });
            known && !refused
        })
}

/// `body` gzipped (RFC 1952), or `None` if the encoder failed.
pub(crate) fn gzip(body: &[u8]) -> Option<Bytes> {
    GZIP.with(|slot| {
        let mut slot = slot.borrow_mut();
        let encoder = slot
            .get_or_insert_with(|| Compress::new_gzip(Compression::new(GZIP_LEVEL), WINDOW_BITS));
        encoder.reset();
        // JSON usually shrinks 4-10×; grow if it does not.
        let mut out = Vec::with_capacity(body.len() / 3 + 64);
        loop {
            let consumed = usize::try_from(encoder.total_in()).ok()?;
            let input = body.get(consumed..)?;
            match encoder.compress_vec(input, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => break,
                Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(1024)),
                Err(_) => {
                    // Never leave a half-used encoder behind.
                    *slot = None;
                    return None;
                }
            }
        }
        Some(Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn negotiation_subset_matches_tower_http() {
        for yes in [
            "gzip",
            "x-gzip",
            "gzip, deflate",
            "deflate, GZIP",
            "identity, gzip",
        ] {
            assert!(picks_gzip(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in [
            "br",
            "gzip, br",
            "gzip, deflate, br, zstd",
            "gzip;q=0",
            "gzip;q=0.5, identity",
            "*",
            "gzip, *",
            "identity",
            "",
        ] {
            assert!(!picks_gzip(&HeaderValue::from_static(no)), "{no}");
        }
    }

    #[test]
    fn zstd_subset_matches_tower_http() {
        for yes in [
            "zstd",
            "gzip, deflate, br, zstd",
            "ZSTD, gzip",
            "identity, zstd",
        ] {
            assert!(picks_zstd(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in [
            "gzip",
            "br",
            "zstd;q=0",
            "zstd, gzip;q=1",
            "*",
            "zstd, *",
            "",
        ] {
            assert!(!picks_zstd(&HeaderValue::from_static(no)), "{no}");
        }
    }

    #[test]
    fn zstd_round_trips_and_reuses_the_encoder() {
        for body in [b"".to_vec(), br#"{"a":1}"#.repeat(400)] {
            for _ in 0..2 {
                let z = zstd(&body).unwrap();
                let back = zstd::bulk::decompress(&z, body.len() + 1).unwrap();
                assert_eq!(back, body);
            }
        }
    }

    #[test]
    fn identity_subset_matches_tower_http() {
        for yes in ["identity", "deflate", "compress, identity", "", "unknown"] {
            assert!(picks_identity(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in [
            "gzip",
            "identity, br",
            "ZSTD",
            "*",
            "identity;q=0",
            "x-gzip",
        ] {
            assert!(!picks_identity(&HeaderValue::from_static(no)), "{no}");
        }
    }

    #[test]
    fn round_trips_and_reuses_the_encoder() {
        for body in [
            b"".to_vec(),
            br#"{"a":1}"#.repeat(400),
            (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            for _ in 0..2 {
                let gz = gzip(&body).unwrap();
                assert_eq!(&gz[..2], &[0x1f, 0x8b]);
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, body);
            }
        }
    }
}
