//! JSON bodies of write routes: the nesting-depth limit (`server.max_json_depth`, every JSON
//! body) and the route's schema (`schema = "..."`), both before anything is published.
//!
//! The depth is measured by a byte scan before any parser runs: deeply nested input is what
//! makes recursive parsers, validators and `Drop` impls expensive or overflow the stack, so it
//! is refused before any of them sees it. serde_json's own recursion limit (128) stays a
//! backstop; `server.max_json_depth` is capped below it so that our clearer 400 comes first.

use serde_json::Value;

use crate::error::GatewayError;
use crate::schema::Schema;

/// Whether `body` nests arrays/objects deeper than `max` (a top-level `{}` is depth 1).
///
/// Counts `[`/`{` outside strings, with `\"` and `\\` inside strings handled; closing brackets
/// decrement. No allocation, one pass, stops at the first level over `max`. It does not
/// validate the JSON (the parser after it does), so on malformed input the answer is only a
/// bound, which is all the limit needs.
pub(crate) fn nested_deeper_than(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Checks a JSON body: depth, syntax and, when the route has one, its schema.
pub(crate) fn check(
    body: &[u8],
    max_depth: usize,
    schema: Option<&Schema>,
) -> Result<(), GatewayError> {
    if nested_deeper_than(body, max_depth) {
        return Err(GatewayError::BadRequest(format!(
            "JSON nested deeper than {max_depth}"
        )));
    }
    let not_json = || GatewayError::BadRequest("the body is not valid JSON".into());
    let Some(schema) = schema else {
        // Syntax only: no tree is built.
        return serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .map(drop)
            .map_err(|_| not_json());
    };
    let instance: Value = serde_json::from_slice(body).map_err(|_| not_json())?;
    schema
        .validate(&instance)
        .map_err(|v| GatewayError::InvalidEvent {
            errors: v.errors,
            truncated: v.truncated,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert!(!nested_deeper_than(b"1", 0));
        assert!(nested_deeper_than(b"{}", 0));
        assert!(!nested_deeper_than(b"{}", 1));
        assert!(!nested_deeper_than(br#"{"a":[{"b":[]}]}"#, 4));
        assert!(nested_deeper_than(br#"{"a":[{"b":[]}]}"#, 3));
        // Siblings do not add up.
        assert!(!nested_deeper_than(b"[[],[],[[]],{}]", 3));
        assert!(!nested_deeper_than(nest(64).as_bytes(), 64));
        assert!(nested_deeper_than(nest(65).as_bytes(), 64));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert!(!nested_deeper_than(br#"{"a":"[[[[{{{{"}"#, 1));
        assert!(!nested_deeper_than(br#"["]]]]", "[[[["]"#, 1));
        // An escaped quote does not end the string; an escaped backslash before a quote does.
        assert!(!nested_deeper_than(br#"{"a":"x\"[[[["}"#, 1));
        assert!(nested_deeper_than(br#"{"a":"x\\"[[["}"#, 1));
        assert!(!nested_deeper_than(br#"{"a":"\\\"[[["}"#, 1));
        assert!(!nested_deeper_than(br#"["\\",[]]"#, 2));
        assert!(nested_deeper_than(br#"["\\",[[]]]"#, 2));
    }

    #[test]
    fn check_reports_depth_before_syntax() {
        let deep = nest(200);
        match check(deep.as_bytes(), 64, None) {
            Err(GatewayError::BadRequest(m)) => assert_eq!(m, "JSON nested deeper than 64"),
            other => panic!("{other:?}"),
        }
        assert!(check(nest(64).as_bytes(), 64, None).is_ok());
        assert!(matches!(
            check(b"{", 64, None),
            Err(GatewayError::BadRequest(m)) if m.contains("not valid JSON")
        ));
    }

    mod fuzz {
        //! The scan against serde_json's own view of the depth.
        use super::*;
        use proptest::prelude::*;

        /// Depth of a parsed value, as the scan should count it.
        fn depth(v: &Value) -> usize {
            match v {
                Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }

        fn value() -> impl Strategy<Value = Value> {
            // Strings full of brackets, quotes and backslashes: what could fool the scan.
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                "[\\[\\]{}\"\\\\a-z ]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(12, 64, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map("[\\[\\]{}\"\\\\a-z]{0,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn scan_matches_the_parsed_depth(v in value()) {
                let text = serde_json::to_vec(&v).unwrap();
                let d = depth(&v);
                prop_assert!(!nested_deeper_than(&text, d));
                if d > 0 {
                    prop_assert!(nested_deeper_than(&text, d - 1));
                }
            }

            #[test]
            fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..8) {
                let _ = nested_deeper_than(&bytes, max);
            }
        }
    }
}
