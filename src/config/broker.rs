//! [`BrokerUri`]: an `[amqp] url`/`urls` entry, parsed once at load.

use std::fmt;

use lapin::uri::{AMQPScheme, AMQPUri};

/// A broker URL, parsed. It carries the password, so its `Debug` masks it: settings that
/// hold it can be printed (and a stray `{:?}` in a log line is harmless).
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUri(AMQPUri);

impl BrokerUri {
    /// Parses `url`. The error does not quote the URL (it may hold credentials).
    pub fn parse(url: &str) -> Result<Self, String> {
        // lapin's URI parser reads host names only: `[fd00::5]` would silently become
        // `localhost`, and the gateway would publish to whatever listens there.
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        if host.starts_with('[') {
            return Err(
                "IPv6 address literals are not supported by the AMQP client; use a host name"
                    .to_owned(),
            );
        }
        url.parse::<AMQPUri>()
            .map(Self)
            .map_err(|_| "not a valid amqp:// or amqps:// URL".to_owned())
    }

    /// `amqps://`?
    pub fn is_tls(&self) -> bool {
        self.0.scheme == AMQPScheme::AMQPS
    }

    /// The host name.
    pub fn host(&self) -> &str {
        &self.0.authority.host
    }

    /// The port (the scheme's default when the URL has none).
    pub fn port(&self) -> u16 {
        self.0.authority.port
    }

    /// The virtual host, decoded (`/` for `%2f`).
    pub fn vhost(&self) -> &str {
        &self.0.vhost
    }

    /// `host:port`, for log lines.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host(), self.port())
    }

    /// The whole parsed URL, credentials and query included, for the connection.
    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.0
    }
}

impl fmt::Debug for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = &self.0;
        write!(
            f,
            "{}://{}:MASKED@{}/{}",
            uri.scheme,
            uri.authority.userinfo.username,
            self.authority(),
            uri.vhost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_uri_never_prints_its_password() {
        let uri = BrokerUri::parse("amqps://app:s3cret@broker.internal:5671/prod").unwrap();
        let shown = format!("{uri:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "amqps://app:MASKED@broker.internal:5671/prod");
        assert!(uri.is_tls());
        assert_eq!(
            (uri.host(), uri.port(), uri.vhost()),
            ("broker.internal", 5671, "prod")
        );
        let err = BrokerUri::parse("amqp://app:s3cret@host:notaport/").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn ipv6_literals_are_refused_not_turned_into_localhost() {
        for url in [
            "amqp://u:p@[fd00::5]:5672/",
            "amqp://[::1]/",
            "amqps://u:p@[::1]:5671/%2f",
        ] {
            let err = BrokerUri::parse(url).unwrap_err();
            assert!(err.contains("IPv6"), "{url}: {err}");
        }
        // What the parser would have made of one: not the address given.
        let parsed: AMQPUri = "amqp://u:p@[fd00::5]:5672/".parse().unwrap();
        assert_ne!(parsed.authority.host, "fd00::5");
    }
}
