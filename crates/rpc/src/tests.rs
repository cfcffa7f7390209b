//! The rpc layer against real gRPC servers on loopback: the metadata client
//! follows a follower's leader hint to a member it was never given, and
//! gives up within its retry budget when no member answers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_proto::pb::admin_server::{Admin, AdminServer};
use coffer_proto::pb::{self};
use coffer_proto::LEADER_HINT_KEY;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::{MetaClient, RpcError, Server};

/// An admin service that is either the leader (answers joins) or a
/// follower that names `leader` in its refusal.
#[derive(Clone)]
struct FakeAdmin {
    leader: Option<String>,
    joins: Arc<AtomicU32>,
    /// A member that dies while it serves the call: it cuts its
    /// connections (through `proxy`) and never answers.
    dies: Option<Arc<tokio::sync::Notify>>,
}

#[tonic::async_trait]
impl Admin for FakeAdmin {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        self.joins.fetch_add(1, Ordering::SeqCst);
        if let Some(cut) = &self.dies {
            cut.notify_waiters();
            std::future::pending::<()>().await;
        }
        match &self.leader {
            Some(leader) => {
                let mut s = Status::unavailable("not the leader");
                s.metadata_mut().insert(LEADER_HINT_KEY, leader.parse().map_err(|_| Status::internal("bad hint"))?);
                Err(s)
            }
            None => {
                let r = req.into_inner();
                Ok(Response::new(pb::JoinResponse {
                    members: vec![pb::MetaMember { id: r.id, addr: r.addr, role: "voter".into(), site: r.site }],
                }))
            }
        }
    }

    async fn remove_member(&self, _: Request<pb::RemoveMemberRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        Err(Status::unimplemented("remove"))
    }

    async fn node_metrics(
        &self,
        _: Request<pb::NodeMetricsRequest>,
    ) -> Result<Response<pb::NodeMetricsResponse>, Status> {
        Err(Status::unimplemented("metrics"))
    }

    async fn catalog_digest(
        &self,
        _: Request<pb::CatalogDigestRequest>,
    ) -> Result<Response<pb::CatalogDigestResponse>, Status> {
        Err(Status::unimplemented("digest"))
    }
}

/// Serves `admin` on an ephemeral port until the sender is dropped.
async fn serve(admin: FakeAdmin) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(Server::new().service(AdminServer::new(admin)).serve(listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn join_req() -> pb::JoinRequest {
    pb::JoinRequest { id: 7, addr: "127.0.0.1:9".into(), site: "a".into(), voter: true }
}

#[tokio::test]
async fn follows_the_leader_hint_to_an_unlisted_member() {
    let leader_joins = Arc::new(AtomicU32::new(0));
    let follower_joins = Arc::new(AtomicU32::new(0));
    let (leader, _l) = serve(FakeAdmin { leader: None, joins: leader_joins.clone(), dies: None }).await;
    let (follower, _f) =
        serve(FakeAdmin { leader: Some(leader.clone()), joins: follower_joins.clone(), dies: None }).await;

    // Only the follower is known; the leader is reached through its hint.
    let client = MetaClient::new(&[follower], Duration::from_secs(5)).expect("client");
    let resp = client
        .call_admin("join", |mut c| async move { c.join(join_req()).await })
        .await
        .expect("join through the hint");
    assert_eq!(resp.members.len(), 1);
    assert_eq!(resp.members[0].id, 7);
    assert_eq!(follower_joins.load(Ordering::SeqCst), 1);
    assert_eq!(leader_joins.load(Ordering::SeqCst), 1);

    // The client stays on the leader for the next call.
    client.call_admin("join", |mut c| async move { c.join(join_req()).await }).await.expect("second join");
    assert_eq!(follower_joins.load(Ordering::SeqCst), 1);
    assert_eq!(leader_joins.load(Ordering::SeqCst), 2);
}

/// A TCP proxy to `target` that drops every connection it carries when
/// `cut` is notified, as the death of the process behind it would.
async fn proxy(target: String, cut: Arc<tokio::sync::Notify>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (target, cut) = (target.clone(), cut.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.notified() => {}
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_call_whose_member_dies_under_it_is_retried_on_the_next_member() {
    let cut = Arc::new(tokio::sync::Notify::new());
    let dying_joins = Arc::new(AtomicU32::new(0));
    let leader_joins = Arc::new(AtomicU32::new(0));
    let (dying, _d) = serve(FakeAdmin { leader: None, joins: dying_joins.clone(), dies: Some(cut.clone()) }).await;
    let dying = proxy(dying, cut).await;
    let (leader, _l) = serve(FakeAdmin { leader: None, joins: leader_joins.clone(), dies: None }).await;
    let client = MetaClient::new(&[dying, leader], Duration::from_secs(5)).expect("client");
    let resp = client
        .call_admin("join", |mut c| async move { c.join(join_req()).await })
        .await
        .expect("the call goes on to the next member when its connection breaks");
    assert_eq!(resp.members.len(), 1);
    assert_eq!(dying_joins.load(Ordering::SeqCst), 1, "the dying member got the call first");
    assert_eq!(leader_joins.load(Ordering::SeqCst), 1);
}

#[test]
fn answers_of_a_server_are_not_taken_for_broken_connections() {
    assert!(!crate::meta_client::retryable(&Status::unknown("transport error")));
    assert!(!crate::meta_client::retryable(&Status::failed_precondition("no")));
    assert!(crate::meta_client::retryable(&Status::unavailable("no leader")));
}

#[tokio::test]
async fn gives_up_within_its_retry_budget_when_nobody_answers() {
    // A listener that is bound and then dropped leaves a port that refuses.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").to_string();
    let client = MetaClient::new(&[dead], Duration::from_millis(300)).expect("client");
    let start = Instant::now();
    let err = client.call_admin("join", |mut c| async move { c.join(join_req()).await }).await.unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}

#[test]
fn refuses_a_malformed_endpoint() {
    assert!(matches!(MetaClient::new(&["".into()], Duration::from_secs(1)), Err(RpcError::NoEndpoints)));
    assert!(matches!(
        MetaClient::new(&["bad host:1".into()], Duration::from_secs(1)),
        Err(RpcError::BadEndpoint { .. })
    ));
}

/// A shard node whose listing answers a cursor that never advances, as a
/// buggy or hostile node might; every other call is refused.
#[derive(Clone)]
struct StuckLister;

type Frames = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ShardFrame, Status>> + Send>>;

#[tonic::async_trait]
impl pb::shard_store_server::ShardStore for StuckLister {
    async fn put_shard(
        &self,
        _: Request<tonic::Streaming<pb::PutShardRequest>>,
    ) -> Result<Response<pb::PutShardResponse>, Status> {
        Err(Status::unimplemented("put"))
    }
    type GetShardStream = Frames;
    async fn get_shard(&self, _: Request<pb::GetShardRequest>) -> Result<Response<Frames>, Status> {
        Err(Status::unimplemented("get"))
    }
    async fn delete_shard(&self, _: Request<pb::ShardRef>) -> Result<Response<pb::DeleteShardResponse>, Status> {
        Err(Status::unimplemented("delete"))
    }
    async fn stat_shard(&self, _: Request<pb::ShardRef>) -> Result<Response<pb::ShardHeader>, Status> {
        Err(Status::unimplemented("stat"))
    }
    async fn node_info(&self, _: Request<pb::NodeInfoRequest>) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Err(Status::unimplemented("info"))
    }
    async fn rebuild_shard(
        &self,
        _: Request<pb::RebuildShardRequest>,
    ) -> Result<Response<pb::RebuildShardResponse>, Status> {
        Err(Status::unimplemented("rebuild"))
    }
    async fn scrub(&self, _: Request<pb::ScrubRequest>) -> Result<Response<pb::ScrubResponse>, Status> {
        Err(Status::unimplemented("scrub"))
    }
    async fn list_shards(&self, _: Request<pb::ListShardsRequest>) -> Result<Response<pb::ListShardsResponse>, Status> {
        let shard = pb::ShardRef { pack_id: vec![7; 16], index: 0 };
        Ok(Response::new(pb::ListShardsResponse { shards: vec![shard], next: vec![1; 17] }))
    }
}

#[tokio::test]
async fn a_listing_whose_cursor_does_not_advance_is_a_bad_answer_not_a_loop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = Server::new().service(pb::shard_store_server::ShardStoreServer::new(StuckLister));
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let pool = crate::ShardPool::default();
    let r = tokio::time::timeout(Duration::from_secs(20), pool.list(&addr)).await.expect("the listing ends");
    assert!(matches!(r, Err(crate::ShardFailure::BadAnswer { .. })), "{r:?}");
}
