//! Locating: chunk ids to `(pack, offset, len)` through the catalog, and
//! pack records to the nodes that hold each shard, both cached for the
//! blobs that follow and fetched in batches.

use super::*;

impl ClusterSource {
    /// Resolves the locations of `ids` that are not cached yet.
    pub(super) async fn lookup(&self, ids: &[ChunkId]) -> Result<(), ClientError> {
        let missing: Vec<ChunkId> = {
            let locs = lock(&self.locations);
            let mut seen = HashSet::new();
            ids.iter().filter(|id| !locs.contains_key(id) && seen.insert(**id)).copied().collect()
        };
        let mut packs = HashSet::new();
        for batch in missing.chunks(LOOKUP_BATCH) {
            let req = pb::LookupChunksRequest {
                repo: self.repo.to_string(),
                chunk_ids: batch.iter().map(|id| id.0.to_vec()).collect(),
                // Reading a committed snapshot: its chunks are there even
                // while condemned (see the request's documentation).
                include_condemned: true,
            };
            let resp = self
                .meta
                .call("LookupChunks", |mut c| {
                    let req = req.clone();
                    async move { c.lookup_chunks(req).await }
                })
                .await?;
            let mut locs = lock(&self.locations);
            if locs.len() + resp.found.len() > MAX_LOCATIONS {
                locs.clear();
            }
            for l in &resp.found {
                let (id, loc) = location_from_pb(l)
                    .map_err(|e| ClientError::BadResponse { what: "LookupChunks", reason: e.to_string() })?;
                packs.insert(loc.pack);
                locs.insert(id, loc);
            }
        }
        let packs: Vec<PackId> = packs.into_iter().collect();
        self.load_packs(&packs).await
    }

    /// Fetches the records of `packs` that are not cached yet.
    pub(super) async fn load_packs(&self, packs: &[PackId]) -> Result<(), ClientError> {
        let missing: Vec<PackId> = {
            let known = lock(&self.packs);
            packs.iter().filter(|p| !known.contains_key(p)).copied().collect()
        };
        for batch in missing.chunks(GETPACKS_BATCH) {
            let req = pb::GetPacksRequest { pack_ids: batch.iter().map(|p| p.0.to_vec()).collect() };
            let resp = self
                .meta
                .call("GetPacks", |mut c| {
                    let req = req.clone();
                    async move { c.get_packs(req).await }
                })
                .await?;
            let nodes: HashMap<u64, pb::Node> = resp.nodes.into_iter().map(|n| (n.id, n)).collect();
            let mut known = lock(&self.packs);
            for p in resp.packs {
                let record = PackRecord::try_from(p)
                    .map_err(|e| ClientError::BadResponse { what: "GetPacks", reason: e.to_string() })?;
                let nodes = record
                    .shards
                    .iter()
                    .map(|s| {
                        let n = nodes.get(&s.node.0);
                        NodeRef {
                            id: s.node,
                            addr: n.map(|n| n.addr.clone()).filter(|a| !a.is_empty()),
                            // An unplaced shard reads like one on a down node.
                            down: !s.is_placed() || n.is_some_and(|n| n.state == "down"),
                            site: n.map(|n| n.site.clone()).unwrap_or_default(),
                        }
                    })
                    .collect();
                known.insert(record.id, Arc::new(PackInfo { record, nodes }));
            }
        }
        Ok(())
    }

    pub(super) async fn location(&self, id: ChunkId) -> Result<ChunkLocation, ClientError> {
        if let Some(l) = lock(&self.locations).get(&id).copied() {
            return Ok(l);
        }
        self.lookup(&[id]).await?;
        lock(&self.locations).get(&id).copied().ok_or(ClientError::ChunkNotIndexed { chunk: id })
    }

    pub(super) async fn pack(&self, pack: PackId) -> Result<Arc<PackInfo>, ClientError> {
        if let Some(p) = lock(&self.packs).get(&pack).cloned() {
            return Ok(p);
        }
        self.load_packs(&[pack]).await?;
        lock(&self.packs).get(&pack).cloned().ok_or(ClientError::PackNotFound { pack })
    }
}
