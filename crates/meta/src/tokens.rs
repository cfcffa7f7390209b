//! Repository tokens: their Raft commands (`CreateToken`, `RevokeToken`)
//! and the `Access` gRPC service that creates, lists and revokes them.
//!
//! The leader draws a token's id and secret, proposes a record holding only
//! the secret's hash (`auth::token_hash`), and answers with the token string
//! once; no replica, log entry or snapshot ever holds the secret. Records
//! live under `a/<token id>`; a revoked one stays, marked, so that refusals
//! and `coffer token list` can say so.

use std::sync::Arc;

use coffer_proto::pb::access_server::Access;
use coffer_proto::pb::{self};
use coffer_types::{RepoName, TokenId, TokenRecord, TokenRole};
use tonic::{Request, Response, Status};

use crate::auth::{audit_ok, token_hash, token_key, token_string, Rpc, TokenSecret, TOKEN_KEY_PREFIX};
use crate::command::{Command, CommandResult, Rejection};
use crate::error::MetaError;
use crate::kv::{self, Txn};
use crate::node::{now_ms, MetaNode};

/// Longest name a token may carry.
const MAX_NAME: usize = 128;

/// Records a new token; a repeat of the same record is `AlreadyApplied`.
pub(crate) fn create(txn: &mut Txn<'_>, token: TokenRecord) -> Result<CommandResult, MetaError> {
    if !txn.contains(&kv::repo_key(&token.repo))? {
        return Ok(CommandResult::Rejected(Rejection::UnknownRepo(token.repo)));
    }
    let key = token_key(&token.id);
    if let Some(existing) = txn.get::<TokenRecord>("token", &key)? {
        return Ok(if existing == token {
            CommandResult::AlreadyApplied
        } else {
            CommandResult::Rejected(Rejection::TokenExists(token.id))
        });
    }
    txn.put(key, &token)?;
    Ok(CommandResult::Ok)
}

/// Marks a token revoked; revoking it again keeps the first time.
pub(crate) fn revoke(txn: &mut Txn<'_>, id: TokenId, time_ms: u64) -> Result<CommandResult, MetaError> {
    let key = token_key(&id);
    let Some(mut token) = txn.get::<TokenRecord>("token", &key)? else {
        return Ok(CommandResult::Rejected(Rejection::UnknownToken(id)));
    };
    if token.revoked_ms.is_some() {
        return Ok(CommandResult::AlreadyApplied);
    }
    token.revoked_ms = Some(time_ms);
    txn.put(key, &token)?;
    Ok(CommandResult::Ok)
}

fn info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.to_string(),
        name: t.name.clone(),
        repo: t.repo.to_string(),
        role: t.role.to_string(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms.unwrap_or(0),
        revoked_ms: t.revoked_ms.unwrap_or(0),
    }
}

pub struct AccessService {
    node: Arc<MetaNode>,
}

impl AccessService {
    pub fn new(node: Arc<MetaNode>) -> Self {
        Self { node }
    }

    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, MetaError> {
        kv::get::<TokenRecord>(self.node.sm.tree(), "token", &token_key(id))
    }
}

fn repo_name(s: String) -> Result<RepoName, Status> {
    RepoName::new(s).map_err(|e| Status::invalid_argument(format!("repo: {e}")))
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        let who = self.node.authorize(&req, Rpc::CreateToken, Some(&repo))?;
        let r = req.into_inner();
        let role: TokenRole = r.role.parse().map_err(|e| Status::invalid_argument(format!("role: {e}")))?;
        if r.name.len() > MAX_NAME || r.name.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!("name: at most {MAX_NAME} printable characters")));
        }
        let now = now_ms();
        let expires_ms = match r.expires_ms {
            0 => None,
            t if t <= now => {
                return Err(Status::invalid_argument("expires_ms lies in the past"));
            }
            t => Some(t),
        };
        let (id, secret) = (TokenId::random(), TokenSecret::random());
        let token = TokenRecord {
            id,
            name: r.name,
            repo: repo.clone(),
            role,
            hash: token_hash(id, &secret),
            created_ms: now,
            expires_ms,
            revoked_ms: None,
        };
        let info = info(&token);
        self.node.raft_write(Command::CreateToken { token }).await?;
        audit_ok(&who, Rpc::CreateToken, Some(&repo), &format!("token {id} role {role}"));
        Ok(Response::new(pb::CreateTokenResponse { token: token_string(id, &secret), info: Some(info) }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let repo = match req.get_ref().repo.as_str() {
            "" => None,
            name => Some(repo_name(name.to_string())?),
        };
        self.node.authorize(&req, Rpc::ListTokens { all: repo.is_none() }, repo.as_ref())?;
        self.node.read_barrier().await?;
        let tokens = kv::scan::<TokenRecord>(self.node.sm.tree(), "token", TOKEN_KEY_PREFIX)?
            .iter()
            .filter(|t| repo.as_ref().is_none_or(|r| *r == t.repo))
            .map(info)
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id: TokenId = req.get_ref().id.parse().map_err(|e| Status::invalid_argument(format!("id: {e}")))?;
        // The token's repository decides whose admin may revoke it; an
        // unknown id is refused as if it were of a repository the caller
        // does not administer, unless the caller is a cluster administrator.
        self.node.require_leader()?;
        let repo = self.token(&id)?.map(|t| t.repo);
        let who = self.node.authorize(&req, Rpc::RevokeToken, repo.as_ref())?;
        let Some(repo) = repo else {
            return Err(MetaError::Rejected(Rejection::UnknownToken(id)).into());
        };
        self.node.raft_write(Command::RevokeToken { id, time_ms: now_ms() }).await?;
        audit_ok(&who, Rpc::RevokeToken, Some(&repo), &format!("token {id}"));
        let record = self.token(&id)?.ok_or(MetaError::Rejected(Rejection::UnknownToken(id)))?;
        Ok(Response::new(pb::RevokeTokenResponse { info: Some(info(&record)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{run, tree};
    use coffer_types::{ErasureParams, Hash32, RepoRecord};

    fn record(id: u8) -> TokenRecord {
        TokenRecord {
            id: TokenId([id; 8]),
            name: "n".into(),
            repo: RepoName::new("r").unwrap(),
            role: TokenRole::Backup,
            hash: Hash32([id; 32]),
            created_ms: 1,
            expires_ms: None,
            revoked_ms: None,
        }
    }

    #[test]
    fn tokens_are_created_once_and_revoked_once() {
        let t = tree();
        let create = |r: TokenRecord| Command::CreateToken { token: r };
        assert!(matches!(run(&t, create(record(1))), CommandResult::Rejected(Rejection::UnknownRepo(_))));
        let repo = RepoRecord {
            name: RepoName::new("r").unwrap(),
            params: ErasureParams::new(2, 1).unwrap(),
            key_slots: vec![vec![1]],
            created_ms: 1,
        };
        run(&t, Command::CreateRepo { repo });
        assert_eq!(run(&t, create(record(1))), CommandResult::Ok);
        assert_eq!(run(&t, create(record(1))), CommandResult::AlreadyApplied);
        let mut other = record(1);
        other.role = TokenRole::Admin;
        assert!(matches!(run(&t, create(other)), CommandResult::Rejected(Rejection::TokenExists(_))));

        let revoke = |id: u8, time_ms| Command::RevokeToken { id: TokenId([id; 8]), time_ms };
        assert!(matches!(run(&t, revoke(2, 5)), CommandResult::Rejected(Rejection::UnknownToken(_))));
        assert_eq!(run(&t, revoke(1, 5)), CommandResult::Ok);
        assert_eq!(run(&t, revoke(1, 9)), CommandResult::AlreadyApplied);
        let got: TokenRecord = kv::get(&t, "token", &token_key(&TokenId([1; 8]))).unwrap().unwrap();
        assert_eq!(got.revoked_ms, Some(5));
        assert_eq!(got.role, TokenRole::Backup, "a conflicting create changed nothing");
    }
}
