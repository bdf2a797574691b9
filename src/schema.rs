//! JSON Schemas of write routes (`schema = "schemas/user.json"`): loaded and compiled once at
//! config load, checked against every body of the route before anything is published.
//!
//! What this module guarantees, so the request path can rely on it:
//! - drafts 7 and 2020-12 only, chosen from `$schema` (absent: 2020-12); any other `$schema` is
//!   refused at load rather than validated under rules the author did not write for;
//! - nothing is ever fetched: every `$ref` must resolve inside the file (`#/$defs/...`). A
//!   reference to a URL or another file fails at load, naming it. The crate is built without
//!   its `resolve-http`/`resolve-file` features and a retriever that refuses everything is
//!   installed as well, so a later feature unification cannot turn fetching back on;
//! - `pattern`/`patternProperties` run on the `regex` crate (finite automata, time linear in
//!   the input), never on a backtracking engine: a pattern like `^(a+)+$` cannot be made to
//!   spin on a crafted body. The price: look-around and back-references are refused at load;
//! - a failed validation is reported as [`SchemaViolation`]s, an instance JSON pointer and the
//!   failing keyword only. The crate's messages quote the offending values, which may be
//!   secrets (a password that failed a `pattern`): they are never used.

use std::fmt;
use std::path::Path;

use jsonschema::{Draft, PatternOptions, Retrieve, Uri, Validator};
use serde::Serialize;
use serde_json::Value;

/// Most violations reported for one body; the rest are not even computed (the error iterator
/// is lazy), which also bounds the work an invalid body costs.
pub const MAX_VIOLATIONS: usize = 10;

/// A compiled route schema.
pub struct Schema {
    /// The file as configured, for logs and `Debug`.
    file: String,
    /// The schema as written, for the published contract ([`crate::spec`]), which embeds it.
    document: Value,
    validator: Validator,
}

// `Validator`'s own Debug prints the whole compiled tree; the file name says enough.
impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("file", &self.file)
            .field("draft", &self.validator.draft())
            .finish_non_exhaustive()
    }
}

/// One way a body failed its schema: where and which keyword, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaViolation {
    /// JSON pointer (RFC 6901) into the body: `""` is the whole body, `/address/zip` a member.
    pub pointer: String,
    /// The schema keyword that failed: `type`, `required`, `pattern`, `additionalProperties`…
    pub keyword: String,
}

/// A body that failed its schema: the first [`MAX_VIOLATIONS`] violations, and whether there
/// were more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations {
    /// At most [`MAX_VIOLATIONS`], in the validator's order.
    pub errors: Vec<SchemaViolation>,
    /// More violations exist than are listed.
    pub truncated: bool,
}

/// Refuses every external reference, with a message that says what to do instead.
struct NoRetrieval;

impl Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "`$ref` to `{uri}` is not fetched: schemas must be self-contained (put shared parts under `$defs` and reference them as `#/$defs/...`)"
        )
        .into())
    }
}

impl Schema {
    /// Reads and compiles the schema at `file` (relative to the working directory, like every
    /// file in the config). The error is one line, without the file name (the caller adds it
    /// with the config key).
    pub fn load(file: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(Path::new(file))
            .map_err(|e| format!("cannot read file: {e}"))?;
        let schema: Value =
            serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?;
        Self::compile(file, &schema)
    }

    /// Compiles an already parsed schema; `file` names it in `Debug`.
    pub fn compile(file: &str, schema: &Value) -> Result<Self, String> {
        let draft = draft_of(schema)?;
        let validator = jsonschema::options()
            .with_draft(draft)
            .with_retriever(NoRetrieval)
            .with_pattern_options(PatternOptions::regex())
            .build(schema)
            .map_err(|e| format!("invalid schema: {e}"))?;
        Ok(Self {
            file: file.to_owned(),
            document: schema.clone(),
            validator,
        })
    }

    /// The file as configured.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The schema document as loaded (what the validator was compiled from).
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Checks `instance`; on failure, the first [`MAX_VIOLATIONS`] violations.
    pub fn validate(&self, instance: &Value) -> Result<(), Violations> {
        let mut errors = Vec::new();
        let mut truncated = false;
        // One more than we report, to know whether there were more; the iterator is lazy.
        for error in self
            .validator
            .iter_errors(instance)
            .take(MAX_VIOLATIONS + 1)
        {
            if errors.len() == MAX_VIOLATIONS {
                truncated = true;
                break;
            }
            // Pointer and keyword only: `error.to_string()` would quote the instance value.
            errors.push(SchemaViolation {
                pointer: error.instance_path().as_str().to_owned(),
                keyword: error.kind().keyword().to_owned(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Violations { errors, truncated })
        }
    }
}

/// The draft named by `$schema` (absent: 2020-12); drafts other than 7 and 2020-12 are refused.
fn draft_of(schema: &Value) -> Result<Draft, String> {
    let Some(uri) = schema.get("$schema") else {
        return Ok(Draft::Draft202012);
    };
    let uri = uri.as_str().ok_or("`$schema` must be a string")?;
    // Both spellings are common: with and without the empty fragment, http or https.
    let bare = uri.trim_end_matches('#');
    let bare = bare
        .strip_prefix("https://")
        .or_else(|| bare.strip_prefix("http://"))
        .unwrap_or(bare);
    match bare {
        "json-schema.org/draft-07/schema" => Ok(Draft::Draft7),
        "json-schema.org/draft/2020-12/schema" => Ok(Draft::Draft202012),
        _ => Err(format!(
            "`$schema` `{uri}` is not supported: use http://json-schema.org/draft-07/schema# or https://json-schema.org/draft/2020-12/schema (or leave it out for 2020-12)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(schema: Value) -> Result<Schema, String> {
        Schema::compile("test.json", &schema)
    }

    #[test]
    fn drafts_7_and_2020_12_are_detected_and_others_refused() {
        let d7 = compile(json!({"$schema": "http://json-schema.org/draft-07/schema#"})).unwrap();
        assert_eq!(d7.validator.draft(), Draft::Draft7);
        let d20 =
            compile(json!({"$schema": "https://json-schema.org/draft/2020-12/schema"})).unwrap();
        assert_eq!(d20.validator.draft(), Draft::Draft202012);
        assert_eq!(
            compile(json!({})).unwrap().validator.draft(),
            Draft::Draft202012
        );
        let e = compile(json!({"$schema": "http://json-schema.org/draft-04/schema#"})).unwrap_err();
        assert!(e.contains("draft-04"), "{e}");
    }

    #[test]
    fn remote_and_file_refs_are_refused_at_compile_time() {
        for target in ["https://example.com/x.json", "file:///etc/passwd"] {
            let e = compile(json!({"$ref": target})).unwrap_err();
            assert!(
                e.contains("self-contained") && e.contains(target),
                "{target}: {e}"
            );
        }
        // A relative file name has no base URI to resolve against: refused before retrieval.
        let e = compile(json!({"$ref": "other.json"})).unwrap_err();
        assert!(e.contains("other.json"), "{e}");
        // Local references are fine.
        let s = compile(json!({
            "$defs": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "properties": {"zip": {"$ref": "#/$defs/zip"}}
        }))
        .unwrap();
        assert!(s.validate(&json!({"zip": "12345"})).is_ok());
    }

    #[test]
    fn backtracking_only_patterns_are_refused() {
        // Back-references need a backtracking engine; `regex` refuses them at load.
        assert!(compile(json!({"pattern": "(a)\\1"})).is_err());
    }

    #[test]
    fn violations_name_pointer_and_keyword_without_values() {
        let s = compile(json!({
            "type": "object",
            "required": ["name"],
            "properties": {"address": {"properties": {"zip": {"pattern": "^[0-9]+$"}}}}
        }))
        .unwrap();
        let v = s
            .validate(&json!({"address": {"zip": "s3cr3t-VALUE"}}))
            .unwrap_err();
        let pairs: Vec<(&str, &str)> = v
            .errors
            .iter()
            .map(|e| (e.pointer.as_str(), e.keyword.as_str()))
            .collect();
        assert!(pairs.contains(&("", "required")), "{pairs:?}");
        assert!(pairs.contains(&("/address/zip", "pattern")), "{pairs:?}");
        assert!(!format!("{v:?}").contains("s3cr3t"));
        assert!(!v.truncated);
    }

    #[test]
    fn violations_are_capped() {
        let s = compile(json!({"items": {"type": "string"}})).unwrap();
        let v = s.validate(&json!((0..50).collect::<Vec<_>>())).unwrap_err();
        assert_eq!(v.errors.len(), MAX_VIOLATIONS);
        assert!(v.truncated);
        let v = s
            .validate(&json!((0..MAX_VIOLATIONS).collect::<Vec<_>>()))
            .unwrap_err();
        assert_eq!(v.errors.len(), MAX_VIOLATIONS);
        assert!(!v.truncated, "exactly the cap is not truncated");
    }
}
