//! Access tokens of a repository: their roles and the record the catalog
//! keeps of each. The catalog never holds a token's secret, only its hash;
//! the token string itself (`cft_<id>_<secret>`) is made and checked by the
//! metadata plane's `auth` module.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Hash32, RepoName, TokenId, TypesError};

/// What a token of a repository may do there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenRole {
    /// Append-only, for agents on the hosts being protected: back up, list
    /// snapshots, extend holds; read no data, forget nothing.
    Backup,
    /// Read: list, restore, check.
    Restore,
    /// Everything on the repository: forget, holds, key slots, tokens.
    Admin,
}

impl TokenRole {
    pub const ALL: [TokenRole; 3] = [TokenRole::Backup, TokenRole::Restore, TokenRole::Admin];

    pub fn as_str(&self) -> &'static str {
        match self {
            TokenRole::Backup => "backup",
            TokenRole::Restore => "restore",
            TokenRole::Admin => "admin",
        }
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenRole {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, TypesError> {
        TokenRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| TypesError::UnknownEnum { what: "token role", value: s.to_string() })
    }
}

/// One token as the catalog keeps it (`a/<token id>`). Revoked tokens stay,
/// marked, so that a refusal can say why and `token list` can show them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    /// Chosen by whoever created it, for people and audit lines; may be empty.
    pub name: String,
    pub repo: RepoName,
    pub role: TokenRole,
    /// The hash of the token's secret (see the metadata plane's `auth`).
    pub hash: Hash32,
    pub created_ms: u64,
    /// Refused from this time on (ms since the epoch); `None` never expires.
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_back_and_nothing_else_parses() {
        for r in TokenRole::ALL {
            assert_eq!(r.as_str().parse::<TokenRole>().unwrap(), r);
        }
        for bad in ["", "Admin", "root", "backup "] {
            assert!(bad.parse::<TokenRole>().is_err(), "{bad:?}");
        }
    }
}
