//! Where the CPU work of a forward pass runs.
//!
//! The fused kernels of this crate and `gemm`'s matrix products split their work
//! with rayon. Called from a thread outside rayon's pool (an application's main
//! thread), every one of those splits hands its work to the pool and puts the caller
//! to sleep until it is done: two context switches per operation, and the caller's
//! core takes no part in the work. A forward pass is hundreds of such operations;
//! [`run_in_pool`] moves the whole pass onto a pool thread once, so that each split
//! is a cheap work-stealing `join` between the pool's threads.

/// Runs `work` on a thread of rayon's current pool: in place when this thread
/// already is one, else on a pool thread while this one waits.
pub fn run_in_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_pool_thread_and_returns_the_result() {
        let (index, value) = run_in_pool(|| (rayon::current_thread_index(), 41 + 1));
        assert!(index.is_some(), "the work ran outside the pool");
        assert_eq!(value, 42);
    }

    #[test]
    fn nested_calls_stay_on_the_same_thread() {
        let (outer, inner) = run_in_pool(|| {
            let outer = std::thread::current().id();
            (outer, run_in_pool(|| std::thread::current().id()))
        });
        assert_eq!(outer, inner);
    }
}
