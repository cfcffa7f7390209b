//! OpenTelemetry traces, exported only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: the spans `tracing`
//! records (a `grpc` span per call a server handles, and every span below
//! it) go over OTLP/gRPC to that collector, batched.
//!
//! The exporter speaks gRPC on our own tonic, in plain text (no second TLS
//! stack; a collector beside the node, or a sidecar, is the usual setup).
//! The batch worker runs on the process's tokio runtime, so it is built
//! inside it, and [`Otel::shutdown`] is called once the command is done and
//! before the runtime stops: the spans still in the batch are flushed then.
//! The standard `OTEL_*` variables (service name, resource attributes,
//! batch sizes and delay, export timeout) apply as the SDK reads them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// Whether the environment asks for traces.
pub fn wanted() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// The installed trace pipeline.
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// Builds the exporter and the provider; must run inside the tokio
    /// runtime (see the module documentation).
    pub fn start() -> Result<Otel, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("build the OTLP span exporter: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let mut resource = opentelemetry_sdk::Resource::builder();
        // OTEL_SERVICE_NAME, read by the resource's detectors, wins.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("coffer");
        }
        let resource =
            resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
        let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
        Ok(Otel { provider })
    }

    /// The layer that hands `tracing`'s spans to the exporter.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("coffer"))
    }

    /// Flushes the spans still batched and stops exporting; called outside
    /// the runtime, which must still be running.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("coffer: could not flush OpenTelemetry spans: {e}");
        }
    }
}
