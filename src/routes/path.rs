//! The one request-path check every handler runs first (reads, proxied writes, publishes).
//!
//! A backend may read a path differently from the router that matched it: it decodes
//! percent-escapes, resolves dot segments, strips Tomcat/Jetty path parameters (`..;x`),
//! treats `\` as `/` (IIS, some Java and Node stacks), stops at a NUL (C libraries), or
//! decodes overlong UTF-8 (`%c0%ae` as `.`). Each of these lets `/public/<trick>/admin`
//! match a public route here and reach `/admin` there. The gateway does not normalise such
//! paths (it would have to guess the backend's rules): it refuses them with 400.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use crate::error::GatewayError;

/// Rejects paths a backend could read as another path. Ordinary paths (no `.`, `%` or `\`)
/// are accepted without allocating; only a path with a percent-escape is decoded into a copy.
pub(super) fn check(path: &str) -> Result<(), GatewayError> {
    // Without a `.` there is no dot segment, without a `%` nothing encoded, and `\` is the
    // only other byte refused: the usual path stops here.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Ok(());
    }
    let decoded: Cow<'_, str> = if path.contains('%') {
        if !well_formed_escapes(path.as_bytes()) {
            return Err(bad("percent-escapes must be `%` and two hex digits"));
        }
        // `from_utf8` refuses overlong forms (`%c0%ae`, `%e0%80%ae`), surrogates and
        // truncated sequences: anything a lenient decoder could turn into `.` or `/`.
        percent_decode(path.as_bytes())
            .decode_utf8()
            .map_err(|_| bad("percent-escapes must decode to valid UTF-8"))?
    } else {
        Cow::Borrowed(path)
    };
    if decoded.contains(['\\', '\0']) {
        return Err(bad(
            "the path must not contain `\\` or NUL, plain or encoded",
        ));
    }
    // Decoded, so `%2e%2e` and `..%2f` count too. `;` starts a path parameter for Tomcat and
    // Jetty (`/..;x/` is `/../` to them), so a segment is judged by what precedes it.
    let dot_segment = decoded.split('/').any(|segment| {
        let name = segment.split(';').next().unwrap_or(segment);
        name == "." || name == ".."
    });
    if dot_segment {
        return Err(bad(
            "the path must not contain `.` or `..` segments (also encoded, or followed by `;`)",
        ));
    }
    Ok(())
}

/// Whether every `%` is followed by two hex digits (RFC 3986 §2.1); backends disagree on
/// what a stray `%` means (kept, dropped, or an error), so it is refused.
fn well_formed_escapes(path: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = path[i..].iter().position(|&b| b == b'%') {
        let start = i + at;
        match path.get(start + 1..start + 3) {
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i = start + 3,
            _ => return false,
        }
    }
    true
}

fn bad(detail: &str) -> GatewayError {
    GatewayError::BadRequest(detail.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_backend_could_read_differently_are_rejected() {
        for bad in [
            // Dot segments, plain and encoded.
            "/a/../b",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/%2E/b",
            "/..",
            "/a/..",
            "/a/.%2e/b",
            "/a/..%2fb",
            "/a%2f..%2fb",
            // Tomcat/Jetty path parameters.
            "/public/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/public/.;x/admin",
            "/public/%2e%2e;/admin",
            "/public/..%3b/admin",
            // Backslash and NUL.
            "/a\\..\\b",
            "/a\\b",
            "/a/%5c../b",
            "/a/%5C",
            "/a/%00",
            "/a%00.json",
            // Overlong and otherwise invalid UTF-8.
            "/a/%c0%ae%c0%ae/b",
            "/a/%c0%af",
            "/a/%e0%80%ae",
            "/a/%ff",
            "/a/%ed%a0%80",
            "/a/%e2%82",
            "/a/%80",
            // Malformed escapes.
            "/a/%",
            "/a/%2",
            "/a/%zz",
            "/a/%2g",
        ] {
            assert!(
                matches!(check(bad), Err(GatewayError::BadRequest(_))),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "/",
            "/a/b",
            "/a/..b/c",
            "/a/b..",
            "/a/b.json",
            "/.well-known/x",
            "/a/...",
            "/a/;x",
            "/a/b;v=1",
            "/a/%20b",
            "/a/%2Fb",
            "/a/caf%C3%A9",
            "/a/%e2%82%ac",
            "/a/%25",
            "/a/%2e%2e%2e",
        ] {
            assert!(check(ok).is_ok(), "{ok} must pass");
        }
    }
}
