//! Authorisation of the metadata plane's client-facing calls: who is
//! calling (a certificate role from `coffer_rpc::identity`, the cluster
//! admin token, or a repository token) and whether that caller may make
//! this call on this repository.
//!
//! ```text
//!   request ─► require_leader ─► who: admin cert │ cluster admin token │ cft_ token (a/<id>, hash, revoked, expiry)
//!                                 └──► need(rpc): the one table ──► allowed, or PERMISSION_DENIED / UNAUTHENTICATED
//!                                                                     └──► an `audit` line on the leader
//! ```
//!
//! Every RPC of Catalog, Maintenance, Admin and Access is in `need`, one
//! match. Tokens are checked in every mode, TLS or not; node-to-node calls
//! (registration, heartbeats, bad-shard reports of storage nodes) are left
//! to the certificate check of the transport. Refusals are decided on the
//! leader after `require_leader`, so that their audit lines land there.
//! Token expiry is judged against the later of the log clock (`m/clock`)
//! and the leader's clock, so a leader with a slow clock cannot revive a
//! token the log has seen expire.

use coffer_rpc::identity::{self, CertRole};
use coffer_types::{Hash32, RepoName, TokenId, TokenRecord, TokenRole};
use tonic::Request;

use crate::error::MetaError;
use crate::kv;
use crate::node::{now_ms, MetaNode};

/// Every client-facing RPC of the metadata plane, with what decides its
/// requirement when the request's content does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rpc {
    // Catalog.
    RegisterNode,
    Heartbeat,
    ReportBadShards,
    ClusterStatus,
    CreateRepo,
    GetRepo,
    BeginSession,
    EndSession,
    LookupChunks,
    AllocatePack,
    CommitPack,
    CommitSnapshot,
    ListSnapshots,
    /// `data`: some pack asked for holds file data (not only trees or
    /// reference lists).
    GetPacks {
        data: bool,
    },
    ListIncidents,
    DrainNode,
    /// A storage node's orphan collection asking which packs exist.
    KnownPacks,
    GetKeySlots,
    SetKeySlots,
    // Maintenance.
    Forget,
    /// `lift`: the request clears the hold (until 0) rather than setting it.
    Hold {
        lift: bool,
    },
    ListHolds,
    ListChunks,
    Condemn,
    Sweep,
    DropPacks,
    Relocate,
    // Admin.
    Join,
    RemoveMember,
    NodeMetrics,
    CatalogDigest,
    // Access.
    CreateToken,
    /// `all`: every repository's tokens rather than one repository's.
    ListTokens {
        all: bool,
    },
    RevokeToken,
    // Catalog: the source registry.
    ReportSource,
    /// `all`: every repository's sources rather than one repository's.
    ListSources {
        all: bool,
    },
    RemoveSource,
    // Catalog, disaster recovery (issue 14).
    RecordDr,
    ListDr,
    // Maintenance: the leader's garbage collector.
    RunGc,
    GcStatus,
}

/// What a repository token must be able to do for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Add to the repository: backup (or admin).
    Write,
    /// Read its data: restore (or admin).
    Read,
    /// What both an agent backing up and one restoring need: the key slots,
    /// the snapshot list, chunk look-ups, tree packs (backup, restore, admin).
    Any,
    /// Change or remove what is there: admin.
    Admin,
}

impl Grant {
    pub(crate) fn granted_by(self, role: TokenRole) -> bool {
        matches!(
            (self, role),
            (_, TokenRole::Admin)
                | (Grant::Write, TokenRole::Backup)
                | (Grant::Read, TokenRole::Restore)
                | (Grant::Any, TokenRole::Backup | TokenRole::Restore)
        )
    }

    /// The roles that grant it, for refusals.
    fn roles(self) -> &'static str {
        match self {
            Grant::Write => "backup or admin",
            Grant::Read => "restore or admin",
            Grant::Any => "backup, restore or admin",
            Grant::Admin => "admin",
        }
    }
}

/// Who may make a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// A node of the cluster (storage nodes register, heartbeat and report
    /// bad shards): authorised by its certificate at the transport, not here.
    Node,
    /// A metadata node joining (its `meta` certificate) or a cluster
    /// administrator.
    Member,
    /// A cluster administrator: the cluster admin token or an `admin`
    /// certificate.
    Cluster,
    /// A token of the call's repository that grants this (or a cluster
    /// administrator).
    Repo(Grant),
}

/// The table: what every call needs.
pub(crate) fn need(rpc: Rpc) -> Need {
    use Grant::*;
    match rpc {
        Rpc::RegisterNode | Rpc::Heartbeat | Rpc::ReportBadShards | Rpc::KnownPacks => Need::Node,
        Rpc::Join => Need::Member,
        Rpc::ClusterStatus
        | Rpc::CreateRepo
        | Rpc::ListIncidents
        | Rpc::DrainNode
        | Rpc::Condemn
        | Rpc::Sweep
        | Rpc::DropPacks
        | Rpc::Relocate
        | Rpc::RemoveMember
        | Rpc::NodeMetrics
        | Rpc::CatalogDigest
        | Rpc::ListTokens { all: true }
        | Rpc::ListSources { all: true }
        | Rpc::RunGc
        | Rpc::GcStatus => Need::Cluster,
        Rpc::BeginSession
        | Rpc::EndSession
        | Rpc::AllocatePack
        | Rpc::CommitPack
        | Rpc::CommitSnapshot
        | Rpc::ReportSource => Need::Repo(Write),
        // Only ever longer (holds are write-once, see `retention`).
        Rpc::Hold { lift: false } => Need::Repo(Write),
        Rpc::GetRepo
        | Rpc::GetKeySlots
        | Rpc::LookupChunks
        | Rpc::ListSnapshots
        | Rpc::ListHolds
        | Rpc::ListSources { all: false }
        | Rpc::GetPacks { data: false } => Need::Repo(Any),
        Rpc::GetPacks { data: true } | Rpc::ListChunks => Need::Repo(Read),
        Rpc::Forget
        | Rpc::Hold { lift: true }
        | Rpc::SetKeySlots
        | Rpc::CreateToken
        | Rpc::ListTokens { all: false }
        | Rpc::RevokeToken
        | Rpc::RemoveSource => Need::Repo(Admin),
        // An agent that may restore may record its own restores and drills;
        // the report shows the whole repository's figures, which is its
        // admin's (or the cluster administrator's) business.
        Rpc::RecordDr => Need::Repo(Read),
        Rpc::ListDr => Need::Repo(Admin),
    }
}

impl Rpc {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Rpc::RegisterNode => "RegisterNode",
            Rpc::Heartbeat => "Heartbeat",
            Rpc::ReportBadShards => "ReportBadShards",
            Rpc::ClusterStatus => "ClusterStatus",
            Rpc::CreateRepo => "CreateRepo",
            Rpc::GetRepo => "GetRepo",
            Rpc::BeginSession => "BeginSession",
            Rpc::EndSession => "EndSession",
            Rpc::LookupChunks => "LookupChunks",
            Rpc::AllocatePack => "AllocatePack",
            Rpc::CommitPack => "CommitPack",
            Rpc::CommitSnapshot => "CommitSnapshot",
            Rpc::ListSnapshots => "ListSnapshots",
            Rpc::GetPacks { data: false } => "GetPacks",
            Rpc::GetPacks { data: true } => "GetPacks(data)",
            Rpc::ListIncidents => "ListIncidents",
            Rpc::DrainNode => "DrainNode",
            Rpc::KnownPacks => "KnownPacks",
            Rpc::GetKeySlots => "GetKeySlots",
            Rpc::SetKeySlots => "SetKeySlots",
            Rpc::Forget => "Forget",
            Rpc::Hold { lift: false } => "Hold",
            Rpc::Hold { lift: true } => "Hold(lift)",
            Rpc::ListHolds => "ListHolds",
            Rpc::ListChunks => "ListChunks",
            Rpc::Condemn => "Condemn",
            Rpc::Sweep => "Sweep",
            Rpc::DropPacks => "DropPacks",
            Rpc::Relocate => "Relocate",
            Rpc::Join => "Join",
            Rpc::RemoveMember => "RemoveMember",
            Rpc::NodeMetrics => "NodeMetrics",
            Rpc::CatalogDigest => "CatalogDigest",
            Rpc::CreateToken => "CreateToken",
            Rpc::ListTokens { all: false } => "ListTokens",
            Rpc::ListTokens { all: true } => "ListTokens(all)",
            Rpc::RevokeToken => "RevokeToken",
            Rpc::ReportSource => "ReportSource",
            Rpc::ListSources { all: false } => "ListSources",
            Rpc::ListSources { all: true } => "ListSources(all)",
            Rpc::RemoveSource => "RemoveSource",
            Rpc::RecordDr => "RecordDr",
            Rpc::ListDr => "ListDr",
            Rpc::RunGc => "RunGc",
            Rpc::GcStatus => "GcStatus",
        }
    }

    /// Answered by any member from its own state, without a leader.
    fn is_local(self) -> bool {
        matches!(self, Rpc::NodeMetrics | Rpc::CatalogDigest)
    }
}

/// Who a caller turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Who {
    /// The cluster admin token, or an `admin` certificate.
    ClusterAdmin {
        via: &'static str,
    },
    /// A certificate without a token.
    Cert(CertRole),
    Token(TokenRecord),
    /// Neither a certificate nor a token (a plain-text caller).
    Nobody,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::ClusterAdmin { via } => write!(f, "cluster administrator ({via})"),
            Who::Cert(role) => write!(f, "{} certificate", role.as_str()),
            Who::Token(t) if t.name.is_empty() => write!(f, "token {} ({} of {})", t.id, t.role, t.repo),
            Who::Token(t) => write!(f, "token {} {:?} ({} of {})", t.id, t.name, t.role, t.repo),
            Who::Nobody => f.write_str("anonymous caller"),
        }
    }
}

/// The cluster admin token a metadata node is configured with. Only its
/// hash is compared (in constant time); the token itself is kept so that
/// the node can present it when it joins a cluster.
#[derive(Clone)]
pub struct AdminToken {
    token: String,
    hash: blake3::Hash,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<secret>)")
    }
}

/// The shortest cluster admin token accepted: 128 bits of hex.
const MIN_ADMIN_TOKEN: usize = 32;

impl AdminToken {
    /// The token in `text` (one line; surrounding white space is dropped).
    pub fn new(text: &str) -> Result<Self, MetaError> {
        let token = text.trim();
        if token.len() < MIN_ADMIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(MetaError::Config(format!(
                "the cluster admin token must be at least {MIN_ADMIN_TOKEN} printable characters without spaces"
            )));
        }
        if parse_token(token).is_some() {
            return Err(MetaError::Config("the cluster admin token must not look like a repository token".into()));
        }
        Ok(Self { token: token.to_string(), hash: admin_hash(token) })
    }

    /// Reads the token from `path` (`--admin-token-file`).
    pub fn from_file(path: &std::path::Path) -> Result<Self, MetaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MetaError::Config(format!("read the admin token file {}: {e}", path.display())))?;
        Self::new(&text).map_err(|e| MetaError::Config(format!("{}: {e}", path.display())))
    }

    /// A fresh random token (for `coffer dev` and tests).
    pub fn generate() -> String {
        format!("cfa_{}", hex::encode(rand::random::<[u8; 32]>()))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn matches(&self, presented: &str) -> bool {
        // blake3::Hash compares in constant time.
        admin_hash(presented) == self.hash
    }
}

fn admin_hash(token: &str) -> blake3::Hash {
    blake3::Hasher::new_derive_key("coffer 2026 cluster admin token").update(token.as_bytes()).finalize()
}

/// The prefix of every repository token.
pub(crate) const TOKEN_PREFIX: &str = "cft_";

/// A repository token's secret: 32 random bytes, drawn by the leader,
/// shown to the creator once, kept nowhere.
pub(crate) struct TokenSecret(pub(crate) [u8; 32]);

impl TokenSecret {
    pub(crate) fn random() -> Self {
        Self(rand::random())
    }
}

/// The token string: `cft_<16 hex id>_<64 hex secret>`.
pub(crate) fn token_string(id: TokenId, secret: &TokenSecret) -> String {
    format!("{TOKEN_PREFIX}{id}_{}", hex::encode(secret.0))
}

/// The id and secret of a token string, or `None` if it is not one.
pub(crate) fn parse_token(s: &str) -> Option<(TokenId, TokenSecret)> {
    let rest = s.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id: TokenId = id.parse().ok()?;
    let secret: [u8; 32] = hex::decode(secret).ok()?.try_into().ok()?;
    Some((id, TokenSecret(secret)))
}

/// What the catalog keeps of a token: a hash of its secret bound to its id.
pub(crate) fn token_hash(id: TokenId, secret: &TokenSecret) -> Hash32 {
    let mut h = blake3::Hasher::new_derive_key("coffer 2026 repository token v1");
    h.update(id.as_bytes());
    h.update(&secret.0);
    Hash32(*h.finalize().as_bytes())
}

/// The key of a token's record.
pub(crate) fn token_key(id: &TokenId) -> Vec<u8> {
    [TOKEN_KEY_PREFIX, id.as_bytes().as_slice()].concat()
}

pub(crate) const TOKEN_KEY_PREFIX: &[u8] = b"a/";

fn unauthenticated(rpc: Rpc, reason: String) -> MetaError {
    MetaError::Unauthenticated { what: rpc.name(), reason }
}

impl MetaNode {
    /// Who is calling, and whether they may make `rpc` on `repo`: the
    /// caller, or the refusal (logged to `audit`). `repo` is the repository
    /// the call concerns (`None` for calls of the cluster).
    pub(crate) fn authorize<T>(&self, req: &Request<T>, rpc: Rpc, repo: Option<&RepoName>) -> Result<Who, MetaError> {
        let who = self.authenticate(req, rpc)?;
        permit(&who, rpc, repo)?;
        Ok(who)
    }

    /// Who is calling, for a call whose repository is known only later
    /// (`permit` then decides): an unknown, revoked or expired token, or a
    /// malformed header, is refused here (and logged to `audit`). A leader
    /// decides, so that its audit lines are in one place.
    pub(crate) fn authenticate<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<Who, MetaError> {
        if need(rpc) == Need::Node {
            return Ok(identity::cert_role(req).map_or(Who::Nobody, Who::Cert));
        }
        if !rpc.is_local() {
            self.require_leader()?;
        }
        let who = self.identify(req, rpc).inspect_err(|e| {
            if matches!(e, MetaError::Unauthenticated { .. }) {
                tracing::warn!(target: "audit", who = "unidentified", what = rpc.name(), repo = "", outcome = "unauthenticated", reason = %e, "audit: refused");
            }
        })?;
        if who == Who::Nobody {
            // Every call but the node plane's needs someone.
            permit(&who, rpc, None)?;
        }
        Ok(who)
    }

    /// The caller: an admin certificate or the admin token is a cluster
    /// administrator; a repository token must be known, match its hash,
    /// and be neither revoked nor expired.
    fn identify<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<Who, MetaError> {
        let cert = identity::cert_role(req);
        if cert == Some(CertRole::Admin) {
            return Ok(Who::ClusterAdmin { via: "admin certificate" });
        }
        let presented = identity::bearer_token(req).map_err(|s| unauthenticated(rpc, s.message().to_string()))?;
        let Some(presented) = presented else {
            return Ok(cert.map_or(Who::Nobody, Who::Cert));
        };
        if self.config.admin_token.as_ref().is_some_and(|t| t.matches(presented)) {
            return Ok(Who::ClusterAdmin { via: "admin token" });
        }
        let Some((id, secret)) = parse_token(presented) else {
            return Err(unauthenticated(
                rpc,
                "the token is not a coffer token (cft_<id>_<secret>) nor the cluster admin token".into(),
            ));
        };
        let unknown = || unauthenticated(rpc, format!("token {id} is unknown"));
        let Some(record) = kv::get::<TokenRecord>(self.sm.tree(), "token", &token_key(&id))? else {
            return Err(unknown());
        };
        // Hash32 equality is not constant time; compare the hashes as
        // blake3 hashes, which is.
        if blake3::Hash::from_bytes(record.hash.0) != blake3::Hash::from_bytes(token_hash(id, &secret).0) {
            return Err(unknown());
        }
        if let Some(at) = record.revoked_ms {
            return Err(unauthenticated(rpc, format!("token {id} was revoked at {}", coffer_types::time::rfc3339(at))));
        }
        if let Some(expires) = record.expires_ms {
            let clock = kv::get::<u64>(self.sm.tree(), "log clock", kv::KEY_CLOCK)?.unwrap_or(0);
            if expires <= clock.max(now_ms()) {
                return Err(unauthenticated(
                    rpc,
                    format!("token {id} expired at {}", coffer_types::time::rfc3339(expires)),
                ));
            }
        }
        Ok(Who::Token(record))
    }
}

/// Whether `who` may make `rpc` on `repo`; a refusal is logged to `audit`.
pub(crate) fn permit(who: &Who, rpc: Rpc, repo: Option<&RepoName>) -> Result<(), MetaError> {
    judge(who, rpc, need(rpc), repo).inspect_err(|e| {
        let outcome = match e {
            MetaError::Unauthenticated { .. } => "unauthenticated",
            _ => "denied",
        };
        let repo = repo.map(|r| r.to_string()).unwrap_or_default();
        tracing::warn!(target: "audit", who = %who, what = rpc.name(), repo = %repo, outcome, reason = %e, "audit: refused");
    })
}

/// Whether `who` may make `rpc` (which needs `need`) on `repo`.
pub(crate) fn judge(who: &Who, rpc: Rpc, need: Need, repo: Option<&RepoName>) -> Result<(), MetaError> {
    let denied = |reason: String| MetaError::PermissionDenied { what: rpc.name(), reason };
    let needed = || match (need, repo) {
        (Need::Repo(g), Some(r)) => format!("a token of repository {r} with role {}", g.roles()),
        (Need::Repo(g), None) => format!("a repository token with role {}", g.roles()),
        (Need::Member, _) => "a metadata node's certificate or a cluster administrator".into(),
        _ => "a cluster administrator (the cluster admin token or an admin certificate)".into(),
    };
    match (who, need) {
        (Who::ClusterAdmin { .. }, _) | (_, Need::Node) => Ok(()),
        (Who::Cert(CertRole::Meta), Need::Member) => Ok(()),
        (Who::Token(t), Need::Repo(g)) if repo == Some(&t.repo) && g.granted_by(t.role) => Ok(()),
        // An agent's certificate says who connects, not what it may do: a
        // call without a token is unauthenticated, as with no certificate.
        (Who::Nobody | Who::Cert(CertRole::Client), _) => Err(MetaError::Unauthenticated {
            what: rpc.name(),
            reason: format!(
                "no token was presented; this call needs {} (pass --token, or set COFFER_TOKEN or COFFER_TOKEN_FILE)",
                needed()
            ),
        }),
        (who, _) => Err(denied(format!("{who} may not make it: it needs {}", needed()))),
    }
}

/// An audit line for an administrative action that was carried out.
pub(crate) fn audit_ok(who: &Who, rpc: Rpc, repo: Option<&RepoName>, detail: &str) {
    let repo = repo.map(|r| r.to_string()).unwrap_or_default();
    tracing::info!(target: "audit", who = %who, what = rpc.name(), repo = %repo, outcome = "ok", detail, "audit: done");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(repo: &str, role: TokenRole) -> Who {
        Who::Token(TokenRecord {
            id: TokenId([1; 8]),
            name: "agent".into(),
            repo: RepoName::new(repo).unwrap(),
            role,
            hash: Hash32([0; 32]),
            created_ms: 0,
            expires_ms: None,
            revoked_ms: None,
        })
    }

    fn allowed(who: &Who, rpc: Rpc, repo: &str) -> bool {
        judge(who, rpc, need(rpc), Some(&RepoName::new(repo).unwrap())).is_ok()
    }

    #[test]
    fn the_role_table_gives_each_role_what_it_is_for() {
        let backup = token("a", TokenRole::Backup);
        let restore = token("a", TokenRole::Restore);
        let admin = token("a", TokenRole::Admin);
        let writes = [
            Rpc::BeginSession,
            Rpc::EndSession,
            Rpc::AllocatePack,
            Rpc::CommitPack,
            Rpc::CommitSnapshot,
            Rpc::ReportSource,
        ];
        let shared = [
            Rpc::GetRepo,
            Rpc::LookupChunks,
            Rpc::ListSnapshots,
            Rpc::ListHolds,
            Rpc::GetPacks { data: false },
            Rpc::ListSources { all: false },
        ];
        let reads = [Rpc::GetPacks { data: true }, Rpc::ListChunks, Rpc::RecordDr];
        let admin_only = [
            Rpc::Forget,
            Rpc::Hold { lift: true },
            Rpc::CreateToken,
            Rpc::RevokeToken,
            Rpc::ListTokens { all: false },
            Rpc::RemoveSource,
            Rpc::ListDr,
        ];
        let cluster = [
            Rpc::ClusterStatus,
            Rpc::CreateRepo,
            Rpc::ListIncidents,
            Rpc::DrainNode,
            Rpc::Condemn,
            Rpc::Sweep,
            Rpc::DropPacks,
            Rpc::Relocate,
            Rpc::RemoveMember,
            Rpc::NodeMetrics,
            Rpc::CatalogDigest,
            Rpc::Join,
            Rpc::ListTokens { all: true },
            Rpc::ListSources { all: true },
            Rpc::RunGc,
            Rpc::GcStatus,
        ];
        for rpc in writes.iter().chain(&shared).chain(&[Rpc::Hold { lift: false }]) {
            assert!(allowed(&backup, *rpc, "a"), "backup {rpc:?}");
        }
        for rpc in reads.iter().chain(&admin_only).chain(&cluster) {
            assert!(!allowed(&backup, *rpc, "a"), "backup {rpc:?}");
        }
        for rpc in shared.iter().chain(&reads) {
            assert!(allowed(&restore, *rpc, "a"), "restore {rpc:?}");
        }
        for rpc in writes.iter().chain(&admin_only).chain(&cluster).chain(&[Rpc::Hold { lift: false }]) {
            assert!(!allowed(&restore, *rpc, "a"), "restore {rpc:?}");
        }
        for rpc in writes.iter().chain(&shared).chain(&reads).chain(&admin_only) {
            assert!(allowed(&admin, *rpc, "a"), "admin {rpc:?}");
            // Never on another repository.
            let e = judge(&admin, *rpc, need(*rpc), Some(&RepoName::new("b").unwrap())).unwrap_err();
            assert!(matches!(e, MetaError::PermissionDenied { .. }), "{e}");
            assert!(e.to_string().contains("repository b"), "{e}");
        }
        for rpc in &cluster {
            assert!(!allowed(&admin, *rpc, "a"), "a repository admin is no cluster admin: {rpc:?}");
            assert!(allowed(&Who::ClusterAdmin { via: "admin token" }, *rpc, "a"));
        }
        // A metadata node may join; a storage certificate may not.
        assert!(allowed(&Who::Cert(CertRole::Meta), Rpc::Join, "a"));
        assert!(!allowed(&Who::Cert(CertRole::Storage), Rpc::Join, "a"));
        assert!(!allowed(&Who::Cert(CertRole::Meta), Rpc::CreateRepo, "a"));
        // Node-plane calls are the transport's to authorise.
        for rpc in [Rpc::RegisterNode, Rpc::Heartbeat, Rpc::ReportBadShards] {
            assert_eq!(need(rpc), Need::Node);
            assert!(allowed(&Who::Nobody, rpc, "a"));
        }
        // No token at all is UNAUTHENTICATED, and says what to pass.
        let e = judge(&Who::Nobody, Rpc::GetRepo, need(Rpc::GetRepo), Some(&RepoName::new("a").unwrap())).unwrap_err();
        assert!(matches!(e, MetaError::Unauthenticated { .. }));
        assert!(e.to_string().contains("COFFER_TOKEN"), "{e}");
        // A refusal names the role needed.
        let e = judge(&backup, Rpc::Forget, need(Rpc::Forget), Some(&RepoName::new("a").unwrap())).unwrap_err();
        assert!(e.to_string().contains("role admin"), "{e}");
    }

    #[test]
    fn tokens_parse_back_and_hash_bound_to_their_id() {
        let (id, secret) = (TokenId([0xab; 8]), TokenSecret([7; 32]));
        let s = token_string(id, &secret);
        assert!(s.starts_with("cft_abababababababab_0707"), "{s}");
        assert_eq!(s.len(), 4 + 16 + 1 + 64);
        let (back_id, back_secret) = parse_token(&s).unwrap();
        assert_eq!(back_id, id);
        assert_eq!(token_hash(back_id, &back_secret), token_hash(id, &secret));
        // Another id with the same secret, or one bit of the secret, hashes apart.
        assert_ne!(token_hash(TokenId([0xac; 8]), &secret), token_hash(id, &secret));
        let mut flipped = TokenSecret(secret.0);
        flipped.0[31] ^= 1;
        assert_ne!(token_hash(id, &flipped), token_hash(id, &secret));
        for bad in [
            "",
            "cft_",
            "cft_abababababababab",
            "cft_abab_0707",
            "cfx_abababababababab_0707070707070707070707070707070707070707070707070707070707070707",
            &s[..s.len() - 1],
            &format!("{s}00"),
            &s.replace("cft_ab", "cft_zz"),
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
        // Two fresh secrets differ.
        assert_ne!(TokenSecret::random().0, TokenSecret::random().0);
    }

    #[test]
    fn the_admin_token_matches_only_itself_and_short_ones_are_refused() {
        let text = AdminToken::generate();
        let t = AdminToken::new(&format!("{text}\n")).unwrap();
        assert!(t.matches(&text));
        assert!(!t.matches(&text[..text.len() - 1]));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains(&text));
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new(&format!("{} x", text)).is_err());
        let repo_like = token_string(TokenId([1; 8]), &TokenSecret([2; 32]));
        assert!(AdminToken::new(&repo_like).is_err());
    }
}
