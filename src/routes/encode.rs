//! gzip, br and zstd for complete response bodies, at the level the caller asks for.
//!
//! tower-http's compression builds a new encoder for every response: for deflate that is a
//! ~300 KB state allocated and zeroed per response, which cost more than compressing a 2 KB
//! JSON body itself (bench/, BENCHMARKS.md); for zstd a new compression context; for br a
//! state sized for a 4 MiB window at quality 11 (brotli's default, which tower-http keeps). A
//! body the gateway already holds in full is encoded here instead: gzip and zstd with one
//! encoder per coding, level and worker thread, reset between responses; br in one shot with
//! its window sized to the body (brotli has no reset; a small window makes its state small).
//! Only where the outcome is certain to be the same coding: tower-http's negotiation must
//! pick it for the `Accept-Encoding` value (checked by [`picks_gzip`], [`picks_br`],
//! [`picks_zstd`]) and its predicate must allow compression (checked by the caller).
//! Everything else (q-values, `*`, streamed bodies) still goes through tower-http.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use http::HeaderValue;

/// deflate window: 2^15 bytes, the gzip default.
const WINDOW_BITS: u8 = 15;

/// brotli's window bounds (RFC 7932 §9.1: 2^10 – 2^24 bytes; 22 is its default).
const BROTLI_MIN_WINDOW_BITS: u32 = 10;
const BROTLI_MAX_WINDOW_BITS: u32 = 22;

thread_local! {
    // One encoder per level in use (the configured dynamic and cached levels: two).
    static GZIP: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    static ZSTD: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
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

/// `body` as one zstd frame (RFC 8878) at `level`, or `None` if the encoder failed.
pub(crate) fn zstd(body: &[u8], level: i32) -> Option<Bytes> {
    ZSTD.with(|slot| {
        let mut encoders = slot.borrow_mut();
        let i = match encoders.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                encoders.push((level, zstd::bulk::Compressor::new(level).ok()?));
                encoders.len() - 1
            }
        };
        // Each call starts a new frame on the kept context (parameters stay, state resets).
        match encoders[i].1.compress(body) {
            Ok(out) => Some(Bytes::from(out)),
            Err(_) => {
                encoders.swap_remove(i);
                None
            }
        }
    })
}

/// True when tower-http's negotiation is certain to choose br for this `Accept-Encoding`: br
/// is listed, zstd (preferred on a tie) and `*` are not, and no q-value is given (iOS sends
/// `gzip, deflate, br`).
pub(crate) fn picks_br(accept_encoding: &HeaderValue) -> bool {
    let Ok(value) = accept_encoding.to_str() else {
        return false;
    };
    if value.contains(';') {
        return false;
    }
    let mut br = false;
    for token in value.split(',').map(str::trim) {
        if token == "*" || token.eq_ignore_ascii_case("zstd") {
            return false;
        }
        br |= token.eq_ignore_ascii_case("br");
    }
    br
}

/// `body` as a brotli stream (RFC 7932) at `quality`, or `None` if the encoder failed. The
/// window is the smallest that holds the body, so the encoder's state stays small.
pub(crate) fn br(body: &[u8], quality: u32) -> Option<Bytes> {
    let needed = usize::BITS - body.len().saturating_sub(1).leading_zeros();
    let params = brotli::enc::BrotliEncoderParams {
        quality: i32::try_from(quality).ok()?,
        lgwin: i32::try_from(needed.clamp(BROTLI_MIN_WINDOW_BITS, BROTLI_MAX_WINDOW_BITS)).ok()?,
        size_hint: body.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(body.len() / 3 + 64);
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).ok()?;
    Some(Bytes::from(out))
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

/// `body` gzipped (RFC 1952) at `level` (1–9), or `None` if the encoder failed.
pub(crate) fn gzip(body: &[u8], level: u32) -> Option<Bytes> {
    GZIP.with(|slot| {
        let mut encoders = slot.borrow_mut();
        let i = match encoders.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                encoders.push((
                    level,
                    Compress::new_gzip(Compression::new(level), WINDOW_BITS),
                ));
                encoders.len() - 1
            }
        };
        let encoder = &mut encoders[i].1;
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
                    encoders.swap_remove(i);
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
                let z = zstd(&body, 3).unwrap();
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
                let gz = gzip(&body, 6).unwrap();
                assert_eq!(&gz[..2], &[0x1f, 0x8b]);
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, body);
            }
        }
    }

    #[test]
    fn br_subset_matches_tower_http() {
        for yes in ["br", "gzip, deflate, br", "BR, gzip", "identity, br"] {
            assert!(picks_br(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in [
            "gzip",
            "gzip, deflate, br, zstd",
            "br;q=0",
            "br, gzip;q=1",
            "*",
            "br, *",
            "",
        ] {
            assert!(!picks_br(&HeaderValue::from_static(no)), "{no}");
        }
    }

    #[test]
    fn br_round_trips_at_every_level_and_size() {
        for body in [
            b"".to_vec(),
            b"x".to_vec(),
            br#"{"a":1}"#.repeat(400),
            (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            for quality in [1, 4, 9, 11] {
                let encoded = br(&body, quality).unwrap();
                let mut back = Vec::new();
                brotli::BrotliDecompress(&mut &encoded[..], &mut back).unwrap();
                assert_eq!(back, body, "quality {quality}, {} bytes", body.len());
            }
        }
    }

    #[test]
    fn higher_levels_give_smaller_bodies_with_encoders_kept_per_level() {
        let body: Vec<u8> = (0..400)
            .flat_map(|i| {
                format!(r#"{{"id":{i},"name":"user {i}","tags":["a","b"]}},"#).into_bytes()
            })
            .collect();
        let fast = gzip(&body, 1).unwrap();
        let high = gzip(&body, 9).unwrap();
        assert!(high.len() < fast.len(), "{} vs {}", high.len(), fast.len());
        // Alternating levels on one thread: each keeps its own encoder, same output each time.
        assert_eq!(gzip(&body, 1).unwrap(), fast);
        assert_eq!(gzip(&body, 9).unwrap(), high);
        assert!(zstd(&body, 12).unwrap().len() < zstd(&body, 1).unwrap().len());
        assert!(br(&body, 9).unwrap().len() < br(&body, 1).unwrap().len());
    }
}
