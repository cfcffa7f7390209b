//! Crate tests that need more than one module: the walker and restore over
//! an in-memory store, and the whole backup and restore pipelines against a
//! fake cluster served over loopback gRPC.

mod fake_cluster;
mod keys;
mod pipeline;
mod walk_restore;
