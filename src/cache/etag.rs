//! Entity tags: generating one when the upstream has none, weak `If-None-Match` comparison
//! (RFC 9110 §13.1.2), and weakening a tag when the gateway changes the content coding.

use http::HeaderValue;

/// A strong ETag for `body`: 128-bit XXH3, which is fast and stable across releases. It
/// identifies bytes, not resources, so collisions only matter within one URL's history.
pub(crate) fn generate(body: &[u8]) -> HeaderValue {
    let hash = xxhash_rust::xxh3::xxh3_128(body);
    HeaderValue::try_from(format!("\"{hash:032x}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The opaque part of an entity tag, without `W/`.
fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// Whether an `If-None-Match` field value matches `etag` with weak comparison: `*` matches any
/// current representation, otherwise any listed tag whose opaque part equals ours.
pub(crate) fn none_match_matches<'a>(
    if_none_match: impl IntoIterator<Item = &'a HeaderValue>,
    etag: Option<&HeaderValue>,
) -> bool {
    let Some(ours) = etag.and_then(|e| e.to_str().ok()) else {
        // No validator: only `*` could match, and then only for an existing representation,
        // which the caller has; RFC 9110 §13.1.2.
        return if_none_match
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim() == "*"));
    };
    let ours = opaque(ours);
    if_none_match
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || opaque(t) == ours)
}

/// `W/"x"` for `"x"`; already-weak tags are returned as they are. Used when the gateway
/// compresses: the bytes differ per coding, so the tag can only claim semantic equivalence.
pub(crate) fn weaken(etag: &HeaderValue) -> HeaderValue {
    match etag.to_str() {
        Ok(t) if t.starts_with("W/") => etag.clone(),
        Ok(t) => HeaderValue::try_from(format!("W/{t}")).unwrap_or_else(|_| etag.clone()),
        Err(_) => etag.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn generated_tags_are_strong_and_stable() {
        let a = generate(b"hello");
        assert_eq!(a, generate(b"hello"));
        assert_ne!(a, generate(b"hello!"));
        assert!(a.to_str().unwrap().starts_with('"'));
    }

    #[test]
    fn weak_comparison_lists_and_star() {
        let tag = hv("\"abc\"");
        assert!(none_match_matches([&hv("\"abc\"")], Some(&tag)));
        assert!(none_match_matches([&hv("W/\"abc\"")], Some(&tag)));
        assert!(none_match_matches(
            [&hv("\"x\", W/\"abc\" ,\"y\"")],
            Some(&tag)
        ));
        assert!(none_match_matches(
            [&hv("\"x\""), &hv("\"abc\"")],
            Some(&tag)
        ));
        assert!(none_match_matches([&hv("*")], Some(&tag)));
        assert!(!none_match_matches([&hv("\"abcd\"")], Some(&tag)));
        assert!(none_match_matches([&hv("\"abc\"")], Some(&hv("W/\"abc\""))));
        assert!(none_match_matches([&hv("*")], None));
        assert!(!none_match_matches([&hv("\"abc\"")], None));
    }

    #[test]
    fn weaken_is_idempotent() {
        assert_eq!(weaken(&hv("\"a\"")), "W/\"a\"");
        assert_eq!(weaken(&hv("W/\"a\"")), "W/\"a\"");
    }
}
