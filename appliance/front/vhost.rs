//! Virtual hosts: which instance answers a `Host` (or TLS SNI) name.
//!
//! Names are exact (`fact.rog.pe`) or wildcards (`*.fact.rog.pe`, any depth of
//! subdomain, not the bare name). Precedence, as nginx's `server_name`: an exact
//! name first, then the longest matching wildcard, then the configured default
//! instance, else none (the caller answers 421). Matching is case-insensitive,
//! ignores a `:port` and a trailing dot. Pure data; touches nothing.

use std::collections::HashMap;

/// A problem with one configured domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error(
        "`{0}` is not a valid host name (letters, digits, `-` and `.`; `*.` only as the first label)"
    )]
    Invalid(String),
    #[error("`{name}` is already served by instance `{other}`")]
    Duplicate { name: String, other: String },
}

/// The routing table, built once from every instance's `domains`.
#[derive(Debug, Clone, Default)]
pub struct VhostTable {
    exact: HashMap<String, usize>,
    /// Wildcard suffixes without the `*`, e.g. `.fact.rog.pe`, longest first.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl VhostTable {
    /// Add `name` for the instance with index `target`; `owner` names it in errors.
    pub fn add(&mut self, name: &str, target: usize, owner: &[String]) -> Result<(), DomainError> {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let (suffix, is_wild) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        if !valid_host(suffix) {
            return Err(DomainError::Invalid(name.to_string()));
        }
        let dup = |prev: usize| DomainError::Duplicate {
            name: name.to_string(),
            other: owner.get(prev).cloned().unwrap_or_default(),
        };
        if is_wild {
            let key = format!(".{suffix}");
            if let Some((_, prev)) = self.wildcards.iter().find(|(k, _)| *k == key) {
                return Err(dup(*prev));
            }
            self.wildcards.push((key, target));
            self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        } else if let Some(prev) = self.exact.insert(lower.clone(), target) {
            self.exact.insert(lower, prev);
            return Err(dup(prev));
        }
        Ok(())
    }

    pub fn set_default(&mut self, target: usize) {
        self.default = Some(target);
    }

    /// The instance for a `Host` header or SNI name, if any.
    pub fn lookup(&self, host: &str) -> Option<usize> {
        self.lookup_named(host).or(self.default)
    }

    /// Like [`lookup`](Self::lookup), without falling back to the default.
    pub fn lookup_named(&self, host: &str) -> Option<usize> {
        let name = normalize(host);
        self.exact.get(name.as_ref()).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
                .map(|(_, t)| *t)
        })
    }

    /// The instance that answers hosts no instance names, if configured.
    pub fn default_target(&self) -> Option<usize> {
        self.default
    }
}

/// Lowercase, without `:port` or a trailing dot. IPv6 literals keep their brackets.
pub fn normalize(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.trim();
    let no_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    let trimmed = no_port.strip_suffix('.').unwrap_or(no_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> VhostTable {
        let owners = vec![
            "fact".to_string(),
            "tenant-x".to_string(),
            "other".to_string(),
        ];
        let mut t = VhostTable::default();
        t.add("fact.rog.pe", 0, &owners).unwrap();
        t.add("*.fact.rog.pe", 0, &owners).unwrap();
        t.add("*.x.fact.rog.pe", 1, &owners).unwrap();
        t.add("special.x.fact.rog.pe", 2, &owners).unwrap();
        t
    }

    #[test]
    fn exact_name_wins_over_every_wildcard() {
        assert_eq!(table().lookup("special.x.fact.rog.pe"), Some(2));
        assert_eq!(table().lookup("fact.rog.pe"), Some(0));
    }

    #[test]
    fn longest_wildcard_wins() {
        assert_eq!(table().lookup("a.x.fact.rog.pe"), Some(1));
        assert_eq!(table().lookup("a.fact.rog.pe"), Some(0));
        assert_eq!(table().lookup("deep.a.fact.rog.pe"), Some(0));
    }

    #[test]
    fn wildcard_does_not_match_the_bare_name_or_a_lookalike() {
        let owners = vec!["a".to_string()];
        let mut t = VhostTable::default();
        t.add("*.rog.pe", 0, &owners).unwrap();
        assert_eq!(t.lookup("rog.pe"), None);
        assert_eq!(t.lookup("evilrog.pe"), None);
        assert_eq!(t.lookup("a.rog.pe"), Some(0));
    }

    #[test]
    fn matching_ignores_case_port_and_trailing_dot() {
        assert_eq!(table().lookup("FACT.Rog.PE:8080"), Some(0));
        assert_eq!(table().lookup("Tenant1.fact.rog.pe."), Some(0));
    }

    #[test]
    fn unknown_host_falls_back_to_the_default_or_none() {
        let mut t = table();
        assert_eq!(t.lookup("example.com"), None);
        t.set_default(2);
        assert_eq!(t.lookup("example.com"), Some(2));
        assert_eq!(t.lookup_named("example.com"), None);
        assert_eq!(t.lookup("127.0.0.1:8080"), Some(2));
        assert_eq!(t.lookup("[::1]:8080"), Some(2));
    }

    #[test]
    fn duplicate_and_invalid_names_are_refused() {
        let owners = vec!["a".to_string(), "b".to_string()];
        let mut t = VhostTable::default();
        t.add("a.example", 0, &owners).unwrap();
        assert_eq!(
            t.add("A.example", 1, &owners),
            Err(DomainError::Duplicate {
                name: "A.example".into(),
                other: "a".into()
            })
        );
        assert_eq!(t.lookup("a.example"), Some(0));
        for bad in ["", "*.", "a..b", "-a.b", "a_b.c", "*.*.a", "a.*.b", "a b"] {
            assert!(t.add(bad, 1, &owners).is_err(), "{bad:?} accepted");
        }
    }
}
