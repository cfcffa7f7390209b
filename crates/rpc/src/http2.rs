//! HTTP/2 flow control for the streams that carry shards, in both
//! directions: a storage node receiving a put (its server, `bulk`), and an
//! agent, a node or a rebuild receiving the answer to a shard read (every
//! channel). One table, so that the two sides cannot drift apart.
//!
//! hyper's defaults are small for shard traffic: a server takes 1 MiB per
//! stream and per connection, and a client 2 MiB per stream, in frames of
//! 16 KiB. A put frame of 1 MiB stalled on a window update at each frame,
//! and a restore's ranged read of up to 4 MiB stalled once in its middle
//! and came as 256 frames, each a wake-up of the reading task.

/// The receive window of one stream: a whole shard of a 16 MiB 4+2 pack,
/// or one ranged read, in flight without a window update.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
/// The receive window of one connection: what a peer may have sent and
/// this side not yet read, over all its streams.
pub(crate) const CONNECTION_WINDOW: u32 = 8 << 20;
/// The largest frame this side accepts: a 1 MiB shard frame arrives in 4
/// frames instead of 64.
pub(crate) const MAX_FRAME: u32 = 256 << 10;
