//! Mutual TLS against real servers on loopback: a call with the right
//! certificates reaches the service with the caller's identity; plain text
//! against TLS (and the reverse), a certificate from another CA, a server
//! of the wrong role and a caller of the wrong role are all refused with a
//! message that says why; a certificate replaced on disk is served without
//! a restart.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_pki::{Leaf, Pem};
use coffer_proto::pb;
use coffer_proto::pb::admin_server::{Admin, AdminServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::identity::{cert_role, peer, CertRole, Peer};
use crate::tls::{probe, Security, TlsPaths};
use crate::{admin_client, ChannelConfig, Server};

/// Records who called `node_metrics`.
#[derive(Clone, Default)]
struct Recorder {
    callers: Arc<Mutex<Vec<Option<Peer>>>>,
}

#[tonic::async_trait]
impl Admin for Recorder {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        assert!(cert_role(&req).is_some());
        Ok(Response::new(pb::JoinResponse { members: vec![] }))
    }
    async fn remove_member(&self, _: Request<pb::RemoveMemberRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        Err(Status::unimplemented("remove"))
    }
    async fn node_metrics(
        &self,
        req: Request<pb::NodeMetricsRequest>,
    ) -> Result<Response<pb::NodeMetricsResponse>, Status> {
        self.callers.lock().unwrap().push(peer(&req));
        Ok(Response::new(pb::NodeMetricsResponse::default()))
    }
    async fn catalog_digest(
        &self,
        _: Request<pb::CatalogDigestRequest>,
    ) -> Result<Response<pb::CatalogDigestResponse>, Status> {
        Err(Status::unimplemented("digest"))
    }
}

fn leaf(role: &str, name: &str) -> Leaf {
    Leaf {
        role: role.into(),
        name: name.into(),
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
    }
}

/// Writes `ca`'s certificate and a new certificate for (`role`, `name`)
/// into `dir`, and returns the security that uses them.
fn identity(dir: &Path, ca: &Pem, role: &str, name: &str) -> Security {
    let pem = coffer_pki::issue(ca, &leaf(role, name)).unwrap();
    let paths = write(dir, ca, &pem, name);
    Security::tls(paths).unwrap()
}

fn write(dir: &Path, ca: &Pem, pem: &Pem, name: &str) -> TlsPaths {
    let paths = TlsPaths {
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    coffer_pki::write_file(&paths.ca, &ca.cert, 0o644, true).unwrap();
    coffer_pki::write_file(&paths.key, &pem.key, 0o600, true).unwrap();
    coffer_pki::write_file(&paths.cert, &pem.cert, 0o644, true).unwrap();
    paths
}

async fn serve(security: Security, rec: Recorder) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(Server::new().security(security).service(AdminServer::new(rec)).serve(listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn metrics(addr: &str, security: &Security, expect: CertRole) -> Result<(), Status> {
    let ch = ChannelConfig::new(addr).unwrap().security(security.clone()).peer_role(expect).connect_lazy();
    admin_client(ch).node_metrics(pb::NodeMetricsRequest {}).await.map(|_| ())
}

#[tokio::test]
async fn a_call_with_the_right_certificates_carries_the_callers_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = coffer_pki::new_ca("t").unwrap();
    let server = identity(dir.path(), &ca, "meta", "m1");
    let admin = identity(dir.path(), &ca, "admin", "ops");
    let rec = Recorder::default();
    let (addr, _stop) = serve(server, rec.clone()).await;
    metrics(&addr, &admin, CertRole::Meta).await.unwrap();
    assert_eq!(*rec.callers.lock().unwrap(), vec![Some(Peer { role: CertRole::Admin, name: "ops".into() })]);

    // The policy table refuses a storage certificate on membership calls,
    // before the service runs.
    let storage = identity(dir.path(), &ca, "storage", "s1");
    let ch = ChannelConfig::new(&addr).unwrap().security(storage).connect_lazy();
    let err = admin_client(ch).join(pb::JoinRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("needs a meta or admin certificate"), "{}", err.message());
}

#[tokio::test]
async fn plain_text_and_tls_refuse_each_other_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let ca = coffer_pki::new_ca("t").unwrap();
    let (tls_addr, _a) = serve(identity(dir.path(), &ca, "meta", "m1"), Recorder::default()).await;
    let (plain_addr, _b) = serve(Security::Insecure, Recorder::default()).await;

    let err = metrics(&tls_addr, &Security::Insecure, CertRole::Meta).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("requires TLS") && err.message().contains("--insecure"), "{}", err.message());

    let client = identity(dir.path(), &ca, "client", "c1");
    let err = metrics(&plain_addr, &client, CertRole::Meta).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("--insecure"), "{text}");
}

#[tokio::test]
async fn another_ca_and_the_wrong_server_role_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (coffer_pki::new_ca("t").unwrap(), coffer_pki::new_ca("other").unwrap());
    let rec = Recorder::default();
    let (addr, _stop) = serve(identity(dir.path(), &ca, "meta", "m1"), rec.clone()).await;

    let other_dir = tempfile::tempdir().unwrap();
    let stranger = identity(other_dir.path(), &other_ca, "admin", "intruder");
    let err = metrics(&addr, &stranger, CertRole::Meta).await.unwrap_err();
    assert!(format!("{err:?}").contains("not signed by our CA"), "{err:?}");

    // A client that wants a storage node but reaches a metadata node.
    let client = identity(dir.path(), &ca, "client", "c1");
    let err = metrics(&addr, &client, CertRole::Storage).await.unwrap_err();
    assert!(format!("{err:?}").contains("where a storage certificate is expected"), "{err:?}");
    assert!(rec.callers.lock().unwrap().is_empty(), "no refused call reached the service");
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = coffer_pki::new_ca("t").unwrap();
    let first = coffer_pki::issue(&ca, &leaf("meta", "m1")).unwrap();
    let paths = write(dir.path(), &ca, &first, "node");
    let server = Security::tls(paths.clone()).unwrap();
    let (addr, _stop) = serve(server, Recorder::default()).await;
    let client = identity(dir.path(), &ca, "client", "c1");
    assert_eq!(probe(&addr, &client, CertRole::Meta).await.unwrap().name, "m1");

    // A bad file is ignored (the old certificate keeps being served) ...
    coffer_pki::write_file(&paths.cert, "not a certificate", 0o644, true).unwrap();
    // ... and a good one replaces it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert_eq!(probe(&addr, &client, CertRole::Meta).await.unwrap().name, "m1");
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() + Duration::from_secs(2) > deadline {
            break;
        }
    }
    let renewed = coffer_pki::issue(&ca, &leaf("meta", "m1-renewed")).unwrap();
    write(dir.path(), &ca, &renewed, "node");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let name = probe(&addr, &client, CertRole::Meta).await.unwrap().name;
        if name == "m1-renewed" {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was never served (still {name})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node whose clock is days behind the one that issued the certificates
/// (the chaos suite sets clocks 2 days back) still accepts its peers': the
/// certificates `coffer certs` makes are valid from `coffer_pki::BACKDATE`
/// before they were issued. Past that margin a clock is refused.
#[test]
fn certificates_are_accepted_by_a_clock_days_behind() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{ServerName, UnixTime};
    let ca = coffer_pki::new_ca("coffer test CA").expect("CA");
    let pem = coffer_pki::issue(&ca, &leaf("meta", "meta-1")).expect("leaf");
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::certs_from_pem(ca.cert.as_bytes()).expect("CA PEM") {
        roots.add(c).expect("root");
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    let chain = crate::tls::certs_from_pem(pem.cert.as_bytes()).expect("leaf PEM");
    let name = ServerName::try_from("localhost").expect("name");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let at = |behind: Duration| UnixTime::since_unix_epoch(now - behind);
    let day = Duration::from_secs(86_400);
    verifier.verify_server_cert(&chain[0], &[], &name, &[], at(Duration::ZERO)).expect("valid now");
    verifier.verify_server_cert(&chain[0], &[], &name, &[], at(2 * day)).expect("valid for a clock 2 days behind");
    let margin = coffer_pki::BACKDATE;
    let refused = verifier.verify_server_cert(&chain[0], &[], &name, &[], at(margin + day));
    assert!(refused.is_err(), "a clock further behind than the margin is refused");
}
