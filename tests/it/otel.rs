//! OpenTelemetry traces, only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: a
//! tiny OTLP collector in the test (the collector's `TraceService` from
//! `opentelemetry-proto`, on tonic) receives the spans of a real `coffer
//! dev` process, and the spans still in its batch when it is stopped are
//! flushed on shutdown.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, Cluster, ClusterSpec};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// What the collector received: (service name, span name) per span.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, String)>>>);

impl Received {
    fn spans(&self) -> Vec<(String, String)> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?;
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push((service.clone(), s.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Starts the collector on a loopback port; returns its address.
fn collector(rt: &tokio::runtime::Runtime, received: Received) -> Result<std::net::SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).context("bind the collector")?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received))
            .serve_with_incoming(incoming)
            .await;
    });
    Ok(addr)
}

#[test]
fn spans_reach_an_otlp_collector_and_are_flushed_on_shutdown() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let received = Received::default();
    let addr = collector(&rt, received.clone())?;
    // Any cluster gives the harness's binary; the traced process is a
    // `coffer dev` of its own.
    Cluster::run(ClusterSpec::default(), |c| {
        let data = c.dir().join("dev");
        let log_path = c.dir().join("dev-otel.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = c.command(&["dev", "--data", &data.display().to_string(), "--listen", "127.0.0.1:0"]);
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            // Nothing leaves before shutdown unless the batch is flushed
            // then: an hour's delay, and a batch that never fills.
            .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "1000000")
            .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000000")
            .env("COFFER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd.spawn().context("spawn coffer dev")?;
        let started =
            wait_until("coffer dev to start", Duration::from_secs(120), || data.join("env").exists().then_some(()));
        let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Err(e) = started {
            let _ = child.kill();
            return Err(e.context(log_text()));
        }
        ensure!(received.spans().is_empty(), "spans exported before shutdown: {:?}", received.spans());
        let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        ensure!(term.success(), "kill -TERM failed");
        let status = wait_until("coffer dev to exit", Duration::from_secs(60), || child.try_wait().ok().flatten());
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                return Err(e.context(log_text()));
            }
        };
        ensure!(status.success(), "coffer dev exited {status}:\n{}", log_text());
        // The flush happened before the process exited.
        let spans = received.spans();
        ensure!(!spans.is_empty(), "no span reached the collector:\n{}", log_text());
        ensure!(spans.iter().all(|(service, _)| service == "coffer"), "service names: {spans:?}");
        ensure!(
            spans.iter().any(|(_, name)| name.starts_with("coffer.v1.")),
            "no span of a coffer gRPC call: {spans:?}"
        );
        Ok(())
    })
}
