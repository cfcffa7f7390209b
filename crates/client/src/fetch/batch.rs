//! Batching: a restore's blobs cut into ranged reads of one data shard
//! (`batches_by_span`), each served by one `GetShard` and opened blob by
//! blob; a batch that fails goes through the per-blob path.

use super::*;

impl ClusterSource {
    /// Where the cached location of `id` lies, when it is one piece of one
    /// data shard: the only blobs a batch read can serve.
    pub(super) fn single_piece(
        locs: &HashMap<ChunkId, ChunkLocation>,
        packs: &HashMap<PackId, Arc<PackInfo>>,
        id: &ChunkId,
    ) -> Option<(PackId, ShardRange)> {
        let loc = locs.get(id)?;
        let rec = &packs.get(&loc.pack)?.record;
        match locate(rec.params, rec.pack_len, loc.offset, loc.len as u64).ok()?.as_slice() {
            [piece] => Some((loc.pack, *piece)),
            _ => None,
        }
    }

    /// Fetches a batch the plan made: blobs of one data shard, read with a
    /// single ranged call, then opened and delivered one by one on a
    /// blocking thread. Whatever that read cannot serve (a failed read, a
    /// blob that fails authentication, a degraded pack) goes through the
    /// per-blob path.
    pub(super) async fn fetch_span(
        &self,
        batch: Vec<ChunkId>,
        counters: &RestoreCounters,
        deliver: Deliver,
    ) -> Result<(), ClientError> {
        self.lookup(&batch).await?;
        let pieces: Option<Vec<(PackId, ShardRange)>> = {
            let (locs, packs) = (lock(&self.locations), lock(&self.packs));
            batch.iter().map(|id| Self::single_piece(&locs, &packs, id)).collect()
        };
        let one_shard = pieces.as_ref().and_then(|p| {
            let &(pack, first) = p.first()?;
            p.iter().all(|(q, r)| *q == pack && r.index == first.index).then_some((pack, first.index))
        });
        let (Some(pieces), Some((pack, index))) = (pieces, one_shard) else {
            return self.deliver_each(batch, counters, deliver).await;
        };
        if batch.len() == 1 || self.is_degraded(pack) {
            return self.deliver_each(batch, counters, deliver).await;
        }
        let start = pieces.iter().map(|(_, r)| r.offset).min().unwrap_or(0);
        let end = pieces.iter().map(|(_, r)| r.offset + r.len).max().unwrap_or(0);
        let info = self.pack(pack).await?;
        let Some(node) = info.nodes.get(index.0 as usize) else {
            return self.deliver_each(batch, counters, deliver).await;
        };
        let read_started = Instant::now();
        let span = match (&node.addr, node.down) {
            (_, true) => Err(ShardFailure::NodeDown),
            (None, _) => Err(ShardFailure::NoAddress { detail: String::new() }),
            (Some(addr), false) => self.shards.get(addr, pack, index, start, Some(end - start)).await,
        };
        let span = match span {
            Ok(span) => span,
            Err(bad) => {
                self.bad_shard(pack, index, Some(node.id), bad);
                // Every blob of this pack now comes from its reconstruction.
                lock(&self.health).degraded.insert(pack);
                return self.deliver_each(batch, counters, deliver).await;
            }
        };
        counters.read.add(read_started.elapsed(), span.len() as u64);
        self.count_read(&node.site, span.len());
        let key = self.key.clone();
        let ranges: Vec<(ChunkId, usize, usize)> =
            batch.iter().zip(&pieces).map(|(id, (_, r))| (*id, (r.offset - start) as usize, r.len as usize)).collect();
        let (deliver, failed, opening, opened) = tokio::task::spawn_blocking(move || {
            let (mut deliver, mut span) = (deliver, span);
            let (mut failed, mut opening, mut opened) = (Vec::new(), std::time::Duration::ZERO, 0u64);
            for (id, at, len) in ranges {
                let started = Instant::now();
                // Opened inside the read buffer: a raw blob's plaintext is
                // written from where it was read, never copied.
                let blob = span.get_mut(at..at + len).ok_or_else(|| ClientError::DataLoss {
                    pack,
                    reason: format!("chunk {id} lies outside the range read"),
                })?;
                let plain = key.open_in_place(&id, blob);
                opening += started.elapsed();
                match plain {
                    Ok(plain) => {
                        opened += plain.len() as u64;
                        deliver(id, &plain)?;
                    }
                    Err(e) => failed.push((id, e)),
                }
            }
            Ok::<_, ClientError>((deliver, failed, opening, opened))
        })
        .await
        .map_err(|e| ClientError::task("open blobs", e))??;
        counters.open.add(opening, opened);
        if failed.is_empty() {
            return Ok(());
        }
        for (id, e) in &failed {
            tracing::warn!(chunk = %id, %pack, error = %e, "blob fails verification; reconstructing its pack");
        }
        lock(&self.health).degraded.insert(pack);
        self.deliver_each(failed.into_iter().map(|(id, _)| id).collect(), counters, deliver).await
    }

    /// Fetches every blob of `ids` on its own (the per-blob path, which
    /// reconstructs when it must) and delivers them.
    pub(super) async fn deliver_each(
        &self,
        ids: Vec<ChunkId>,
        counters: &RestoreCounters,
        deliver: Deliver,
    ) -> Result<(), ClientError> {
        let started = Instant::now();
        let blobs: Vec<(ChunkId, Vec<u8>)> = futures::stream::iter(ids)
            .map(|id| async move { Ok::<_, ClientError>((id, self.fetch_blob(id).await?)) })
            .buffered(4)
            .try_collect()
            .await?;
        counters.read.add(started.elapsed(), blobs.iter().map(|(_, b)| b.len() as u64).sum());
        deliver_all(deliver, blobs).await.map(drop)
    }
}

/// Cuts blobs, each with the rank of its pack and its piece of one data
/// shard, into batches a single ranged read serves: same pack, same shard,
/// at most `MAX_GAP` unwanted bytes between neighbours, at most `MAX_SPAN`
/// bytes in all (a larger blob is a batch alone). Packs keep their rank
/// order; within a pack, shards and offsets ascend.
pub(super) fn batches_by_span(mut placed: Vec<(usize, ShardRange, ChunkId)>) -> Vec<Vec<ChunkId>> {
    placed.sort_unstable_by_key(|(rank, piece, _)| (*rank, piece.index, piece.offset));
    let mut batches = Vec::new();
    let mut current: Vec<ChunkId> = Vec::new();
    // (pack rank, shard, first byte, end) of the batch being filled.
    let mut span: Option<(usize, ShardIndex, u64, u64)> = None;
    for (rank, piece, id) in placed {
        let end = piece.offset + piece.len;
        match &mut span {
            Some((r, index, start, span_end))
                if *r == rank
                    && *index == piece.index
                    && piece.offset <= *span_end + MAX_GAP
                    && end.max(*span_end) - *start <= MAX_SPAN =>
            {
                *span_end = end.max(*span_end);
            }
            _ => {
                if !current.is_empty() {
                    batches.push(std::mem::take(&mut current));
                }
                span = Some((rank, piece.index, piece.offset, end));
            }
        }
        current.push(id);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}
