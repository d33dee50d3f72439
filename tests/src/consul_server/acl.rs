//! ACL tokens of the test server: `key_prefix` rules, default deny, and Consul's messages.

use std::collections::HashMap;

/// What a rule grants on the keys under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Deny,
    Read,
    /// Read and write.
    Write,
}

/// A token: its public AccessorID (what messages show) and its `key_prefix` rules.
#[derive(Debug, Clone)]
struct Token {
    accessor: String,
    rules: Vec<(String, Access)>,
}

/// The ACL system once enabled: default policy deny; requests without a token get the anonymous
/// token's rules (none unless set with an empty secret).
#[derive(Debug, Default)]
pub(crate) struct Acl {
    tokens: HashMap<String, Token>,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The secret matches no token: 403 "ACL not found".
    UnknownToken,
    /// The token lacks the permission: 403 "Permission denied: ...".
    Lacks { accessor: String, permission: &'static str, key: String },
}

impl Denied {
    pub fn message(&self) -> String {
        match self {
            Denied::UnknownToken => "ACL not found".to_string(),
            Denied::Lacks { accessor, permission, key } => {
                format!("Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}' on \"{key}\"")
            }
        }
    }
}

/// The rules a request is judged by (resolved once per request).
#[derive(Debug, Clone)]
pub(crate) struct Authz {
    token: Option<Token>,
}

impl Acl {
    pub fn set_token(&mut self, secret: &str, rules: &[(&str, Access)]) {
        let accessor = format!("{:08x}-0000-4000-8000-{:012x}", self.tokens.len() + 1, self.tokens.len() + 1);
        let rules = rules.iter().map(|(p, a)| (p.to_string(), *a)).collect();
        self.tokens.insert(secret.to_string(), Token { accessor, rules });
    }

    /// Deletes a token: requests carrying it get 403 "ACL not found" from then on.
    pub fn remove_token(&mut self, secret: &str) {
        self.tokens.remove(secret);
    }

    /// The authorizer for a request's token (None or empty: anonymous).
    pub fn resolve(&self, secret: Option<&str>) -> Result<Authz, Denied> {
        match secret.filter(|s| !s.is_empty()) {
            None => Ok(Authz { token: self.tokens.get("").cloned() }),
            Some(s) => self.tokens.get(s).cloned().map(|t| Authz { token: Some(t) }).ok_or(Denied::UnknownToken),
        }
    }
}

impl Authz {
    /// Everything allowed (ACLs disabled).
    pub fn allow_all() -> Authz {
        Authz {
            token: Some(Token {
                accessor: "00000000-0000-0000-0000-000000000002".into(),
                rules: vec![("".into(), Access::Write)],
            }),
        }
    }

    /// The access the longest matching rule grants on `key` (Deny when no rule matches).
    fn access(&self, key: &str) -> Access {
        let Some(token) = &self.token else { return Access::Deny };
        token
            .rules
            .iter()
            .filter(|(p, _)| key.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| *a)
            .unwrap_or(Access::Deny)
    }

    pub fn can_read(&self, key: &str) -> bool {
        self.access(key) >= Access::Read
    }

    pub fn check(&self, key: &str, write: bool) -> Result<(), Denied> {
        let needed = if write { Access::Write } else { Access::Read };
        if self.access(key) >= needed {
            return Ok(());
        }
        let accessor = self
            .token
            .as_ref()
            .map(|t| t.accessor.clone())
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000002".into());
        Err(Denied::Lacks { accessor, permission: if write { "key:write" } else { "key:read" }, key: key.to_string() })
    }
}
