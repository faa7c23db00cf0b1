//! Image embeddings computed once per image and kept in a least-recently-used cache
//! bounded in bytes. Requests that need the same embedding at once wait for one
//! computation instead of starting their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use samus_model::ImageEmbedding;
use tokio::sync::watch;

use super::work::WorkLimit;

/// An embedding with what it cost.
#[derive(Debug)]
pub struct CachedEmbedding {
    /// The embedding.
    pub embedding: ImageEmbedding,
    /// Milliseconds the image encoder took (reading the image included).
    pub embed_ms: f64,
}

impl CachedEmbedding {
    /// Bytes the embedding holds, with the decoder terms its first prediction kept
    /// (counted from the next eviction check on).
    pub fn bytes(&self) -> usize {
        self.embedding.bytes()
    }
}

/// How a computation ended, as its waiters see it (an error as its message chain).
type Outcome = Option<Result<Arc<CachedEmbedding>, String>>;

/// One image's place in the cache.
#[derive(Debug)]
enum Slot {
    /// Being computed; the receiver tells how it ended.
    Running(watch::Receiver<Outcome>),
    /// Computed, with the clock tick of its last use.
    Ready(Arc<CachedEmbedding>, u64),
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

/// What the cache and its detached computations share.
#[derive(Debug)]
struct Shared {
    slots: Mutex<HashMap<usize, Slot>>,
    limit_bytes: usize,
    clock: AtomicU64,
    computed: AtomicUsize,
    in_progress: AtomicUsize,
}

/// The cache of image embeddings, keyed by image id.
///
/// A computation runs as its own task, not inside the request that asked for it: a
/// request that goes away (a closed tab, a client timeout) leaves it running to the
/// end for the others waiting on it, and the counters stay true.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    shared: Arc<Shared>,
    work: WorkLimit,
}

impl EmbeddingCache {
    /// An empty cache holding at most `limit_bytes` of embeddings (at least one
    /// embedding is always kept, whatever its size), computing them within `work`.
    pub fn new(limit_bytes: usize, work: WorkLimit) -> Self {
        Self {
            shared: Arc::new(Shared {
                slots: Mutex::new(HashMap::new()),
                limit_bytes,
                clock: AtomicU64::new(0),
                computed: AtomicUsize::new(0),
                in_progress: AtomicUsize::new(0),
            }),
            work,
        }
    }

    /// The embedding of image `id`, from the cache or computed by `compute` (on a
    /// blocking thread) when absent; `true` with it when this call did not start the
    /// computation. Concurrent calls for one id share one computation; a failed
    /// computation is not cached.
    pub async fn get_or_compute<F>(
        &self,
        id: usize,
        compute: F,
    ) -> anyhow::Result<(Arc<CachedEmbedding>, bool)>
    where
        F: FnOnce() -> anyhow::Result<ImageEmbedding> + Send + 'static,
    {
        let tick = self.shared.clock.fetch_add(1, Ordering::Relaxed);
        let (mut outcome, started) = {
            let mut slots = self.shared.lock();
            match slots.get_mut(&id) {
                Some(Slot::Ready(embedding, last_used)) => {
                    *last_used = tick;
                    return Ok((Arc::clone(embedding), true));
                }
                Some(Slot::Running(outcome)) => (outcome.clone(), false),
                None => {
                    let (sender, outcome) = watch::channel(None);
                    slots.insert(id, Slot::Running(outcome.clone()));
                    self.shared.in_progress.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(self.clone().compute(id, compute, sender));
                    (outcome, true)
                }
            }
        };
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| anyhow::anyhow!("the encoder stopped"))?
            .clone();
        match ended {
            Some(Ok(embedding)) => Ok((embedding, !started)),
            Some(Err(message)) => Err(anyhow::anyhow!(message)),
            None => Err(anyhow::anyhow!("the encoder stopped")),
        }
    }

    /// Runs one computation to its end and tells its waiters.
    async fn compute<F>(self, id: usize, compute: F, sender: watch::Sender<Outcome>)
    where
        F: FnOnce() -> anyhow::Result<ImageEmbedding> + Send + 'static,
    {
        let result = self
            .work
            .run(move || {
                let start = Instant::now();
                let embedding = compute()?;
                Ok(Arc::new(CachedEmbedding {
                    embedding,
                    embed_ms: start.elapsed().as_secs_f64() * 1e3,
                }))
            })
            .await;
        {
            let mut slots = self.shared.lock();
            match &result {
                Ok(embedding) => {
                    let tick = self.shared.clock.fetch_add(1, Ordering::Relaxed);
                    slots.insert(id, Slot::Ready(Arc::clone(embedding), tick));
                    self.shared.computed.fetch_add(1, Ordering::SeqCst);
                    self.shared.evict(&mut slots, id);
                }
                Err(_) => {
                    slots.remove(&id);
                }
            }
            self.shared.in_progress.fetch_sub(1, Ordering::SeqCst);
        }
        // Nobody may be waiting any more; that is fine.
        let _ = sender.send(Some(result.map_err(|e| format!("{e:#}"))));
    }

    /// Whether image `id`'s embedding is held (or being computed).
    pub fn contains(&self, id: usize) -> bool {
        self.shared.lock().contains_key(&id)
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let slots = self.shared.lock();
        let held: Vec<&Arc<CachedEmbedding>> = slots.values().filter_map(Slot::ready).collect();
        CacheStats {
            computed: self.shared.computed.load(Ordering::SeqCst),
            cached: held.len(),
            bytes: held.iter().map(|e| e.bytes()).sum(),
            limit_bytes: self.shared.limit_bytes,
            in_progress: self.shared.in_progress.load(Ordering::SeqCst),
        }
    }
}

impl Slot {
    fn ready(&self) -> Option<&Arc<CachedEmbedding>> {
        match self {
            Slot::Ready(embedding, _) => Some(embedding),
            Slot::Running(_) => None,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the least recently used embeddings (never `keep`) until the rest fit
    /// the bound.
    fn evict(&self, slots: &mut HashMap<usize, Slot>, keep: usize) {
        loop {
            let held: usize = slots
                .values()
                .filter_map(Slot::ready)
                .map(|e| e.bytes())
                .sum();
            if held <= self.limit_bytes {
                return;
            }
            let oldest = slots
                .iter()
                .filter_map(|(&id, slot)| match slot {
                    Slot::Ready(_, last_used) if id != keep => Some((id, *last_used)),
                    _ => None,
                })
                .min_by_key(|&(_, last_used)| last_used)
                .map(|(id, _)| id);
            match oldest {
                Some(id) => {
                    slots.remove(&id);
                }
                None => return,
            }
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
        let cache = EmbeddingCache::new(128, WorkLimit::new(2));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
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
        let cache = EmbeddingCache::new(1 << 20, WorkLimit::new(1));
        let err = cache
            .get_or_compute(0, || anyhow::bail!("unreadable"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unreadable"));
        let (_, cached) = cache.get_or_compute(0, embedding).await.unwrap();
        assert!(!cached);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_goes_away_leaves_the_computation_to_finish() {
        let cache = EmbeddingCache::new(1 << 20, WorkLimit::new(1));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let request = tokio::spawn({
            let cache = cache.clone();
            async move {
                cache
                    .get_or_compute(7, move || {
                        counted.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        embedding()
                    })
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(cache.stats().in_progress, 1);
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        // A second request joins the running computation instead of starting one.
        let (_, joined) = cache
            .get_or_compute(7, || anyhow::bail!("must not run"))
            .await
            .unwrap();
        assert!(joined);
        let stats = cache.stats();
        assert_eq!((calls.load(Ordering::SeqCst), stats.in_progress), (1, 0));
        assert_eq!((stats.computed, stats.cached), (1, 1));
    }
}
