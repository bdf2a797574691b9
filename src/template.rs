//! `{name}` templates: routing keys, `Location` headers and upstream path rewrites.
//!
//! A template is parsed once from config into literal and placeholder segments, so a request
//! only concatenates. Rendering takes a lookup for placeholder values; what is a *legal* value
//! differs per use (a routing-key word, a path segment) and is checked by the caller, which
//! knows which status to answer.

use std::fmt;

/// One piece of a parsed [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Copied as is.
    Literal(String),
    /// Replaced by the value named here.
    Param(String),
}

/// A parsed `{name}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

impl Template {
    /// Parses `source`; placeholders are `{name}` with `name` made of ASCII letters, digits and
    /// `_`. `{{` and `}}` are not supported on purpose: none of our targets needs braces.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unmatched `}}` in template `{source}`"));
            }
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in template `{source}`"))?;
            let name = &after[..close];
            if !is_param_name(name) {
                return Err(format!(
                    "invalid placeholder `{{{name}}}` in template `{source}` (use letters, digits and `_`)"
                ));
            }
            segments.push(Segment::Param(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Placeholder names, in order of appearance.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Literal text only, concatenated (for length and charset checks at load time).
    pub fn literal_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.len(),
                Segment::Param(_) => 0,
            })
            .sum()
    }

    /// Renders the template; `value` maps a placeholder to its (already validated/encoded)
    /// text, or to an error that is returned as is.
    pub fn render<'a, E>(
        &'a self,
        mut value: impl FnMut(&'a str) -> Result<std::borrow::Cow<'a, str>, E>,
    ) -> Result<String, E> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for segment in &self.segments {
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(p) => out.push_str(&value(p)?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether `name` is a legal placeholder or path parameter name.
pub(crate) fn is_param_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::convert::Infallible;

    #[test]
    fn parses_and_renders() {
        let t = Template::parse("user.{id}.updated").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["id"]);
        assert_eq!(t.literal_len(), "user..updated".len());
        let out = t.render(|p| Ok::<_, Infallible>(Cow::Owned(format!("<{p}>"))));
        assert_eq!(out.unwrap(), "user.<id>.updated");
    }

    #[test]
    fn literal_only_and_adjacent_params() {
        let t = Template::parse("{a}{b}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(Template::parse("plain").unwrap().params().count(), 0);
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in ["a.{id", "a.}", "{}", "{a-b}", "{a.b}", "x{{y}}"] {
            assert!(Template::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn render_propagates_errors() {
        let t = Template::parse("a.{id}").unwrap();
        let out: Result<String, &str> = t.render(|_| Err("bad"));
        assert_eq!(out, Err("bad"));
    }
}
