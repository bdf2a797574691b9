//! [`RequireAuthLayer`]: the per-route rule (public, or token + policy) as a tower layer.

use std::sync::Arc;

use tower::Layer;

use super::Authenticator;
use super::service::RequireAuth;
use crate::config::{AuthPolicy, RouteAuth};

/// Applies one route's access rule; see the [module docs](super) for what it guarantees.
#[derive(Clone, Debug)]
pub(crate) struct RequireAuthLayer {
    pub(crate) rule: Arc<Rule>,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) access: Access,
}

#[derive(Debug)]
pub(crate) enum Access {
    /// No token checked.
    Public,
    /// A valid token satisfying `policy`; `scope` is the 403 challenge's `scope` parameter.
    Token {
        /// `None` only if config validation was bypassed: such a route answers 500.
        authenticator: Option<Authenticator>,
        policy: AuthPolicy,
        scope: Option<Arc<str>>,
    },
}

impl RequireAuthLayer {
    /// A public route: no token is checked (a token sent anyway is ignored, not verified), and
    /// client-sent `X-Auth-*` headers are still removed.
    pub(crate) fn public() -> Self {
        Self {
            rule: Arc::new(Rule {
                access: Access::Public,
            }),
        }
    }

    /// The layer for a route's configured rule: public, or a valid bearer token whose roles
    /// and scopes satisfy the route's policy (an empty policy: any valid token).
    pub(crate) fn for_route(auth: &RouteAuth, authenticator: Option<&Authenticator>) -> Self {
        match auth {
            RouteAuth::Public => Self::public(),
            RouteAuth::Required(policy) => Self::token(authenticator.cloned(), policy.clone()),
        }
    }

    fn token(authenticator: Option<Authenticator>, policy: AuthPolicy) -> Self {
        let scope = (!policy.scopes.is_empty()).then(|| Arc::from(policy.scopes.join(" ")));
        Self {
            rule: Arc::new(Rule {
                access: Access::Token {
                    authenticator,
                    policy,
                    scope,
                },
            }),
        }
    }
}

impl<S> Layer<S> for RequireAuthLayer {
    type Service = RequireAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuth {
            inner,
            rule: self.rule.clone(),
        }
    }
}
