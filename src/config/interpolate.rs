//! `${VAR}` / `${VAR:-default}` interpolation of the config text.
//!
//! Interpolation runs on the raw TOML text, before parsing, so that typed values (addresses,
//! durations) can come from the environment too. References are replaced only inside
//! double-quoted (basic) strings, where each value is escaped so it cannot break out of its
//! string (`url = "${AMQP_URL}"`); comments and single-quoted literal strings are left alone.
//! `$${` is a literal `${`.
//!
//! The environment is passed in as a lookup function, never read from globals here, so tests
//! can interpolate without touching the process environment.

use thiserror::Error;

/// Why interpolation failed. Never carries a variable's value, only its name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InterpolateError {
    /// `${VAR}` without a default, and `VAR` is unset.
    #[error("line {line}: environment variable `{name}` is not set and has no default")]
    Missing {
        /// 1-based line of the reference.
        line: usize,
        /// The variable name.
        name: String,
    },
    /// `${` without a closing `}` or with an invalid name.
    #[error(
        "line {line}: malformed variable reference (expected `${{NAME}}` or `${{NAME:-default}}`)"
    )]
    Malformed {
        /// 1-based line of the reference.
        line: usize,
    },
}

/// Replaces every `${NAME}` / `${NAME:-default}` inside basic strings of `text`.
///
/// An unset variable with a default uses the default; like the shell's `:-`, the default also
/// replaces a set-but-empty value.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Normal,
        Comment,
        Basic,
        MultiBasic,
        Literal,
        MultiLiteral,
    }
    let mut out = String::with_capacity(text.len());
    let mut state = State::Normal;
    let mut line = 1;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let rest = &text[i..];
        let in_basic = matches!(state, State::Basic | State::MultiBasic);
        if in_basic && rest.starts_with("$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if in_basic && rest.starts_with("${") {
            let body_start = &rest[2..];
            let end = body_start
                .find(['}', '\n', '"'])
                .filter(|&e| body_start.as_bytes()[e] == b'}')
                .ok_or(InterpolateError::Malformed { line })?;
            out.push_str(&resolve(&body_start[..end], line, &lookup)?);
            i += 2 + end + 1;
            continue;
        }
        let c = bytes[i];
        let mut step = rest.chars().next().map_or(1, char::len_utf8);
        state = match (state, c) {
            (State::Normal, b'#') => State::Comment,
            (State::Normal, b'"') if rest.starts_with("\"\"\"") => {
                step = 3;
                State::MultiBasic
            }
            (State::Normal, b'"') => State::Basic,
            (State::Normal, b'\'') if rest.starts_with("'''") => {
                step = 3;
                State::MultiLiteral
            }
            (State::Normal, b'\'') => State::Literal,
            (State::Comment, b'\n') => State::Normal,
            (State::Basic | State::MultiBasic, b'\\') => {
                // Keep an escape pair together so `\"` does not end the string.
                step += rest[1..].chars().next().map_or(0, char::len_utf8);
                state
            }
            (State::Basic, b'"') | (State::Literal, b'\'') => State::Normal,
            (State::MultiBasic, b'"') if rest.starts_with("\"\"\"") => {
                step = 3;
                State::Normal
            }
            (State::MultiLiteral, b'\'') if rest.starts_with("'''") => {
                step = 3;
                State::Normal
            }
            (s, _) => s,
        };
        let chunk = &text[i..i + step];
        line += chunk.matches('\n').count();
        out.push_str(chunk);
        i += step;
    }
    Ok(out)
}

/// Looks up one reference body (`NAME` or `NAME:-default`) and escapes the value.
fn resolve(
    body: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    let valid_name = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(InterpolateError::Malformed { line });
    }
    let value = match (lookup(name), default) {
        (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
        (Some(v), _) => v,
        (None, Some(d)) => d.to_owned(),
        (None, None) => {
            return Err(InterpolateError::Missing {
                line,
                name: name.to_owned(),
            });
        }
    };
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, &value);
    Ok(out)
}

/// Escapes `value` for a TOML basic string.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            "QUOTE" => Some("a\"b\\c".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let out = interpolate(
            "a = \"${SET}\"\nb = \"${UNSET:-dflt}\"\nc = \"${EMPTY:-d}\"",
            env,
        );
        assert_eq!(out.unwrap(), "a = \"value\"\nb = \"dflt\"\nc = \"d\"");
    }

    #[test]
    fn empty_default_is_allowed() {
        assert_eq!(interpolate("\"${UNSET:-}\"", env).unwrap(), "\"\"");
    }

    #[test]
    fn missing_variable_names_it_and_the_line() {
        let err = interpolate("a = 1\nb = \"${NOPE}\"", env).unwrap_err();
        assert_eq!(
            err,
            InterpolateError::Missing {
                line: 2,
                name: "NOPE".into()
            }
        );
    }

    #[test]
    fn malformed_references_are_rejected() {
        for text in [
            "\"${",
            "\"${}\"",
            "\"${1A}\"",
            "\"${A B}\"",
            "\"${A\n}\"",
            "\"${A-b}\"",
        ] {
            assert!(
                matches!(
                    interpolate(text, env),
                    Err(InterpolateError::Malformed { .. })
                ),
                "{text:?} should be malformed"
            );
        }
    }

    #[test]
    fn comments_and_literal_strings_are_left_alone() {
        let text =
            "# uses ${NOPE}\na = '${NOPE}' # ${NOPE}\nb = \"\\\"${SET}\"\nc = \"\"\"\n${SET}\"\"\"";
        let out = interpolate(text, env).unwrap();
        assert_eq!(
            out,
            "# uses ${NOPE}\na = '${NOPE}' # ${NOPE}\nb = \"\\\"value\"\nc = \"\"\"\nvalue\"\"\""
        );
    }

    #[test]
    fn missing_variable_line_counts_multiline_strings() {
        let err = interpolate("a = \"\"\"\n\n\"\"\"\nb = \"${NOPE}\"", env).unwrap_err();
        assert!(
            matches!(err, InterpolateError::Missing { line: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn values_cannot_break_out_of_a_toml_string() {
        let out = interpolate("k = \"${QUOTE}\"", env).unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["k"].as_str(), Some("a\"b\\c"));
    }

    #[test]
    fn dollar_without_brace_and_escaped_reference_are_literal() {
        assert_eq!(
            interpolate("\"a$b $${SET}\"", env).unwrap(),
            "\"a$b ${SET}\""
        );
    }
}
