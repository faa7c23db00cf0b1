//! Image embeddings computed once per image and kept in a least-recently-used cache
//! bounded in bytes. Requests that need the same embedding at once wait for one
//! computation instead of starting their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use samus_model::ImageEmbedding;
use tokio::sync::OnceCell;

/// An embedding with what it cost.
#[derive(Debug)]
pub struct CachedEmbedding {
    /// The embedding.
    pub embedding: ImageEmbedding,
    /// Milliseconds the image encoder took (reading the image included).
    pub embed_ms: f64,
}

impl CachedEmbedding {
    /// Bytes the embedding holds.
    pub fn bytes(&self) -> usize {
        self.embedding.tensor().elem_count() * self.embedding.tensor().dtype().size_in_bytes()
    }
}

/// One image's place in the cache: filled once, by whichever request gets there first.
#[derive(Debug, Default)]
struct Slot {
    cell: OnceCell<Arc<CachedEmbedding>>,
    last_used: AtomicU64,
}

/// Counters shown by `GET /api/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CacheStats {
    /// Embeddings computed since the server started (recomputations after eviction
    /// included).
    pub computed: usize,
    /// Embeddings held now.
    pub cached: usize,
    /// Bytes they hold.
    pub bytes: usize,
    /// The bound (`--cache-mb`).
    pub limit_bytes: usize,
    /// Computations running now.
    pub in_progress: usize,
}

/// The cache of image embeddings, keyed by image id.
#[derive(Debug)]
pub struct EmbeddingCache {
    slots: Mutex<HashMap<usize, Arc<Slot>>>,
    limit_bytes: usize,
    clock: AtomicU64,
    computed: AtomicUsize,
    in_progress: AtomicUsize,
}

impl EmbeddingCache {
    /// An empty cache holding at most `limit_bytes` of embeddings (at least one
    /// embedding is always kept, whatever its size).
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            limit_bytes,
            clock: AtomicU64::new(0),
            computed: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
        }
    }

    /// The embedding of image `id`, from the cache or computed by `compute` (on a
    /// blocking thread) when absent; `true` with it when it was cached. Concurrent
    /// calls for one id share one computation; a failed computation is not cached.
    pub async fn get_or_compute<F>(
        &self,
        id: usize,
        compute: F,
    ) -> anyhow::Result<(Arc<CachedEmbedding>, bool)>
    where
        F: FnOnce() -> anyhow::Result<ImageEmbedding> + Send + 'static,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(slots.entry(id).or_default())
        };
        slot.last_used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mut computed_here = false;
        let value = slot
            .cell
            .get_or_try_init(|| async {
                computed_here = true;
                self.in_progress.fetch_add(1, Ordering::SeqCst);
                let result = tokio::task::spawn_blocking(move || {
                    let start = Instant::now();
                    let embedding = compute()?;
                    Ok::<_, anyhow::Error>(CachedEmbedding {
                        embedding,
                        embed_ms: start.elapsed().as_secs_f64() * 1e3,
                    })
                })
                .await;
                self.in_progress.fetch_sub(1, Ordering::SeqCst);
                let embedded =
                    result.map_err(|e| anyhow::anyhow!("the encoder stopped: {e}"))??;
                self.computed.fetch_add(1, Ordering::SeqCst);
                Ok::<_, anyhow::Error>(Arc::new(embedded))
            })
            .await?
            .clone();
        if computed_here {
            self.evict(id);
        }
        Ok((value, !computed_here))
    }

    /// Whether image `id`'s embedding is held (or being computed).
    pub fn contains(&self, id: usize) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }

    /// Drops the least recently used embeddings (never `keep`) until the rest fit
    /// the bound.
    fn evict(&self, keep: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let held: usize = slots
                .values()
                .filter_map(|s| s.cell.get())
                .map(|e| e.bytes())
                .sum();
            if held <= self.limit_bytes {
                return;
            }
            let oldest = slots
                .iter()
                .filter(|(&id, s)| id != keep && s.cell.initialized())
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(&id, _)| id);
            match oldest {
                Some(id) => {
                    slots.remove(&id);
                }
                None => return,
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let held: Vec<&Arc<CachedEmbedding>> =
            slots.values().filter_map(|s| s.cell.get()).collect();
        CacheStats {
            computed: self.computed.load(Ordering::SeqCst),
            cached: held.len(),
            bytes: held.iter().map(|e| e.bytes()).sum(),
            limit_bytes: self.limit_bytes,
            in_progress: self.in_progress.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn embedding() -> anyhow::Result<ImageEmbedding> {
        let t = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
        Ok(ImageEmbedding::from_tensor(t, 10, 10)?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_computation_and_the_bound_holds() {
        // Each embedding is 4 * 2 * 2 floats = 64 bytes; room for two.
        let cache = Arc::new(EmbeddingCache::new(128));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_compute(0, move || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        embedding()
                    })
                    .await
                    .map(|(_, cached)| cached)
            }));
        }
        let mut fresh = 0;
        for t in tasks {
            fresh += usize::from(!t.await.unwrap().unwrap());
        }
        assert_eq!((calls.load(Ordering::SeqCst), fresh), (1, 1));
        for id in 1..4 {
            cache.get_or_compute(id, embedding).await.unwrap();
        }
        let stats = cache.stats();
        assert_eq!((stats.computed, stats.cached, stats.bytes), (4, 2, 128));
        // The two most recent stay; the oldest went first.
        assert!(cache.contains(3) && cache.contains(2) && !cache.contains(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_computation_is_not_cached() {
        let cache = EmbeddingCache::new(1 << 20);
        let err = cache
            .get_or_compute(0, || anyhow::bail!("unreadable"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unreadable"));
        let (_, cached) = cache.get_or_compute(0, embedding).await.unwrap();
        assert!(!cached);
    }
}
