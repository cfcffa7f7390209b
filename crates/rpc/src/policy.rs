//! Which certificate roles may call which gRPC method: one table, applied
//! by every TLS server in front of its services (`Authorize`), so that a
//! storage certificate cannot act as a Raft voter and a client certificate
//! cannot register a node, whatever a service forgets to check.
//!
//! A method missing from the table gets its service's default; a service
//! missing from the table is refused (fail closed). Bearer tokens and
//! repository roles are checked by the metadata services themselves, after
//! this.

use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::Status;

use crate::identity::{self, CertRole, ConnInfo};

use CertRole::{Admin, Client, Meta, Storage};

const ANY: &[CertRole] = &[Meta, Storage, Client, Admin];
const META: &[CertRole] = &[Meta];
const META_ADMIN: &[CertRole] = &[Meta, Admin];
const STORAGE: &[CertRole] = &[Storage];
const CLIENTS: &[CertRole] = &[Client, Admin];
const ADMIN: &[CertRole] = &[Admin];
const SHARD_IO: &[CertRole] = &[Client, Admin, Meta, Storage];
const BAD_SHARDS: &[CertRole] = &[Client, Admin, Storage];

/// The roles that may call `/coffer.v1.SERVICE/METHOD`, or `None` for a
/// path no coffer service serves.
pub fn allowed(path: &str) -> Option<&'static [CertRole]> {
    let rest = path.strip_prefix("/coffer.v1.")?;
    let (service, method) = rest.split_once('/')?;
    Some(match (service, method) {
        // Raft: only metadata voters and learners talk to each other.
        ("Raft", _) => META,
        // Membership: a metadata node joining, or a person through the CLI.
        ("Admin", "Join" | "RemoveMember") => META_ADMIN,
        ("Admin", _) => META_ADMIN,
        // Storage nodes announce themselves; nobody else may. Their orphan
        // collection asks which packs the catalog knows.
        ("Catalog", "RegisterNode" | "Heartbeat" | "KnownPacks") => STORAGE,
        ("Catalog", "ReportBadShards") => BAD_SHARDS,
        ("Catalog", "DrainNode") => ADMIN,
        ("Catalog", "ClusterStatus" | "ListIncidents") => ANY,
        // Repository calls: agents and people (tokens decide which repository).
        ("Catalog", _) => CLIENTS,
        // Garbage collection is the cluster administrator's; retention
        // (forget, holds) and listing chunks for `check` belong to clients.
        ("Maintenance", "Condemn" | "Sweep" | "DropPacks" | "Relocate") => ADMIN,
        ("Maintenance", "RunGc" | "GcStatus") => ADMIN,
        ("Maintenance", _) => CLIENTS,
        // Repository tokens: people and agents (the token table decides).
        ("Access", _) => CLIENTS,
        // Shard I/O: agents write and read, the leader and storage nodes
        // read for rebuilds; deleting and repairing are the leader's (and
        // the administrator's, for gc and scrub from the CLI).
        ("ShardStore", "PutShard" | "GetShard" | "StatShard" | "NodeInfo") => SHARD_IO,
        ("ShardStore", _) => META_ADMIN,
        _ => return None,
    })
}

/// The roles that may call the standard gRPC services every server
/// carries: health checks and server reflection, open to every certificate
/// of the cluster (they reveal whether a port serves, and the schema, which
/// is public; a caller still needs a certificate the CA signed).
pub fn allowed_standard(path: &str) -> Option<&'static [CertRole]> {
    match path.trim_start_matches('/').split_once('/')?.0 {
        "grpc.health.v1.Health" | "grpc.reflection.v1.ServerReflection" => Some(ANY),
        _ => None,
    }
}

/// Checks one request against the table.
pub(crate) fn authorize(path: &str, conn: Option<&ConnInfo>) -> Result<(), Status> {
    let Some(conn) = conn else { return Ok(()) };
    if conn.plaintext_on_tls {
        return Err(identity::plaintext_refusal());
    }
    let Some(peer) = &conn.peer else { return Ok(()) };
    let Some(roles) = allowed(path).or_else(|| allowed_standard(path)) else {
        return Err(Status::permission_denied(format!("{path}: no certificate role may call this method")));
    };
    identity::check(peer, roles, path.trim_start_matches('/'))
}

/// The tower layer that applies the table.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizeLayer;

impl<S> tower_layer::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Authorize<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match authorize(req.uri().path(), req.extensions().get::<ConnInfo>()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                tracing::warn!(target: "audit", path = req.uri().path(), error = %status.message(), "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Peer;

    fn conn(role: CertRole) -> ConnInfo {
        ConnInfo { peer: Some(Peer { role, name: "x".into() }), ..ConnInfo::default() }
    }

    #[test]
    fn the_table_keeps_each_role_to_its_calls() {
        let ok = |p: &str, r: CertRole| authorize(p, Some(&conn(r))).is_ok();
        assert!(ok("/coffer.v1.Raft/AppendEntries", Meta));
        assert!(!ok("/coffer.v1.Raft/Vote", Storage));
        assert!(!ok("/coffer.v1.Raft/InstallSnapshot", Admin));
        assert!(ok("/coffer.v1.Admin/Join", Admin));
        assert!(!ok("/coffer.v1.Admin/Join", Storage));
        assert!(!ok("/coffer.v1.Admin/Join", Client));
        assert!(ok("/coffer.v1.Catalog/RegisterNode", Storage));
        assert!(!ok("/coffer.v1.Catalog/RegisterNode", Client));
        assert!(!ok("/coffer.v1.Catalog/RegisterNode", Admin));
        assert!(ok("/coffer.v1.Catalog/CommitSnapshot", Client));
        assert!(!ok("/coffer.v1.Catalog/CommitSnapshot", Storage));
        assert!(ok("/coffer.v1.ShardStore/GetShard", Storage));
        assert!(!ok("/coffer.v1.ShardStore/DeleteShard", Client));
        assert!(ok("/coffer.v1.ShardStore/DeleteShard", Meta));
        assert!(!ok("/coffer.v1.Maintenance/Sweep", Client));
        assert!(ok("/coffer.v1.Catalog/KnownPacks", Storage));
        assert!(!ok("/coffer.v1.Catalog/KnownPacks", Client));
        assert!(ok("/coffer.v1.Access/CreateToken", Client));
        assert!(!ok("/coffer.v1.Access/CreateToken", Storage));
        assert!(!ok("/coffer.v1.Other/Call", Admin));
        assert!(ok("/grpc.health.v1.Health/Check", Storage));
        assert!(ok("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Client));
        assert!(!ok("/grpc.other.Service/Call", Admin));
        let err = authorize("/coffer.v1.Raft/Vote", Some(&conn(Storage))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("needs a meta certificate"), "{}", err.message());
    }

    #[test]
    fn plain_text_on_a_tls_port_is_refused_and_insecure_servers_check_nothing() {
        let plain = ConnInfo { plaintext_on_tls: true, ..ConnInfo::default() };
        let err = authorize("/coffer.v1.Catalog/GetRepo", Some(&plain)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("--insecure"), "{}", err.message());
        assert!(authorize("/coffer.v1.Raft/Vote", Some(&ConnInfo::default())).is_ok());
        assert!(authorize("/coffer.v1.Raft/Vote", None).is_ok());
    }
}
