//! Degraded reads: a whole pack reconstructed from any k shards that match
//! their recorded checksums, kept in a small LRU because neighbouring
//! blobs share it.

use super::*;

type Rebuilt = Arc<OnceCell<Arc<Vec<u8>>>>;

/// A small LRU of reconstructed packs. An entry is a cell, so that tasks
/// asking for the same pack at once wait for one reconstruction.
#[derive(Default)]
pub(super) struct RebuiltCache {
    order: VecDeque<PackId>,
    cells: HashMap<PackId, Rebuilt>,
}

impl RebuiltCache {
    fn cell(&mut self, pack: PackId) -> Rebuilt {
        if let Some(c) = self.cells.get(&pack).cloned() {
            self.order.retain(|p| *p != pack);
            self.order.push_back(pack);
            return c;
        }
        while self.order.len() >= REBUILT_PACKS {
            if let Some(old) = self.order.pop_front() {
                self.cells.remove(&old);
            }
        }
        let c: Rebuilt = Arc::default();
        self.cells.insert(pack, c.clone());
        self.order.push_back(pack);
        c
    }
}

impl ClusterSource {
    /// The whole pack, reconstructed from any k good shards (cached).
    pub(super) async fn rebuilt_pack(&self, info: &Arc<PackInfo>) -> Result<Arc<Vec<u8>>, ClientError> {
        let pack = info.record.id;
        lock(&self.health).degraded.insert(pack);
        let cell = lock(&self.rebuilt).cell(pack);
        cell.get_or_try_init(|| self.reconstruct(info.clone())).await.cloned()
    }

    pub(super) async fn reconstruct(&self, info: Arc<PackInfo>) -> Result<Arc<Vec<u8>>, ClientError> {
        let rec = &info.record;
        let k = rec.params.k();
        tracing::info!(pack = %rec.id, "reading pack in degraded mode");
        // Data shards first (fewer to rebuild), nodes believed down last.
        let mut order: Vec<usize> =
            (0..rec.params.total()).filter(|i| info.nodes.get(*i).is_some_and(|n| n.id != NodeId::UNPLACED)).collect();
        order.sort_by_key(|&i| (info.nodes[i].down, i >= k));
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; rec.params.total()];
        let mut good = 0usize;
        let mut next = 0usize;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while good + in_flight.len() < k && next < order.len() {
                let i = order[next];
                next += 1;
                let node = info.nodes[i].clone();
                let pack = rec.id;
                in_flight.push(async move {
                    let body = match &node.addr {
                        Some(addr) => self.shards.get(addr, pack, ShardIndex(i as u8), 0, None).await,
                        None => Err(ShardFailure::NoAddress { detail: String::new() }),
                    };
                    if let Ok(b) = &body {
                        self.count_read(&node.site, b.len());
                    }
                    (i, node.id, body)
                });
            }
            let Some((i, node, body)) = in_flight.next().await else { break };
            let index = ShardIndex(i as u8);
            match body {
                Err(bad) => self.bad_shard(rec.id, index, Some(node), bad),
                Ok(body) if body.len() as u64 != rec.shard_len => self.bad_shard(
                    rec.id,
                    index,
                    Some(node),
                    ShardFailure::Mismatch {
                        detail: format!("{} bytes, the record says {}", body.len(), rec.shard_len),
                    },
                ),
                Ok(body) => {
                    let expected = rec.shards.get(i).map(|s| s.checksum);
                    if expected.map(|c| c.0) == Some(*blake3::hash(&body).as_bytes()) {
                        shards[i] = Some(body);
                        good += 1;
                    } else {
                        let detail = "checksum mismatch".to_string();
                        self.bad_shard(rec.id, index, Some(node), ShardFailure::Mismatch { detail });
                    }
                }
            }
        }
        if good < k {
            return Err(ClientError::DataLoss {
                pack: rec.id,
                reason: format!("only {good} of the {k} shards needed are readable"),
            });
        }
        let (params, pack_len, pack) = (rec.params, rec.pack_len, rec.id);
        let bytes = tokio::task::spawn_blocking(move || {
            let codec = Codec::new(params)?;
            codec.reconstruct_data(&mut shards)?;
            codec.join(&shards, pack_len)
        })
        .await
        .map_err(|e| ClientError::task("reconstruct pack", e))?
        .map_err(|source| ClientError::Erasure { pack, source })?;
        Ok(Arc::new(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilt_cache_evicts_the_least_recent() {
        let mut c = RebuiltCache::default();
        let ids: Vec<PackId> = (0..=REBUILT_PACKS as u8).map(|i| PackId([i; 16])).collect();
        let first = c.cell(ids[0]);
        for id in &ids[1..REBUILT_PACKS] {
            c.cell(*id);
        }
        // Touch the first so that the second becomes the oldest.
        assert!(Arc::ptr_eq(&first, &c.cell(ids[0])));
        c.cell(ids[REBUILT_PACKS]);
        assert_eq!(c.cells.len(), REBUILT_PACKS);
        assert!(c.cells.contains_key(&ids[0]));
        assert!(!c.cells.contains_key(&ids[1]));
    }
}
