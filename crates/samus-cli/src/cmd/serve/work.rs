//! A bound on the model and file work running at once: each piece of blocking work
//! (an image encoding, a mask decoding, a label read or write) takes one of as many
//! permits as the machine has cores before it starts, so that a burst of requests
//! queues instead of starting more encoder runs than there are cores to run them.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// The shared permits.
#[derive(Debug, Clone)]
pub struct WorkLimit {
    permits: Arc<Semaphore>,
}

impl WorkLimit {
    /// At most `workers` pieces of work at once (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// One permit per core this process may use.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Runs `work` on a blocking thread once a permit is free. The permit is held
    /// by the blocking thread, so work whose caller went away still counts until it
    /// ends.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| anyhow::anyhow!("the server is stopping: {e}"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| anyhow::anyhow!("the worker stopped: {e}"))?
    }

    /// Permits free now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_limit_run_at_once() {
        let limit = WorkLimit::new(2);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (limit, running, most) =
                    (limit.clone(), Arc::clone(&running), Arc::clone(&most));
                tokio::spawn(async move {
                    limit
                        .run(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(limit.available(), 2);
    }
}
