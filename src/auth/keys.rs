//! [`KeySet`]: verification keys looked up by `kid`.
//!
//! The keys themselves are parsed elsewhere ([`crate::keys`]): static ones once, at config
//! load; those of a JWKS URL at each fetch. A token's `kid` is only a key into this in-memory
//! map.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::Algorithm;

use crate::keys::VerifyKey;

/// Keys by `kid`, plus the keys that have none.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    no_kid: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// Builds a set; a repeated `kid` keeps the first key (and is counted in the result).
    pub(crate) fn new(keys: impl IntoIterator<Item = Arc<VerifyKey>>) -> (Self, usize) {
        let mut set = KeySet::default();
        let mut duplicates = 0;
        for key in keys {
            match &key.kid {
                Some(kid) if set.by_kid.contains_key(kid) => duplicates += 1,
                Some(kid) => {
                    set.by_kid.insert(kid.clone(), key);
                }
                None => set.no_kid.push(key),
            }
        }
        (set, duplicates)
    }

    /// The key with this `kid`.
    pub(crate) fn by_kid(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// Keys without `kid` that verify `alg`.
    pub(crate) fn without_kid(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.no_kid.iter().filter(move |k| k.alg.jwt() == alg)
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.no_kid.len()
    }

    /// The `kid`s in the set (for start-up logs).
    pub(crate) fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}
