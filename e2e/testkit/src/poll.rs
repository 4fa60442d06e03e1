//! Polling until something holds: the one loop every test that waits uses.
//!
//! A check answers `Ok(Some(value))` when done and `Ok(None)` when not yet. An `Err` counts as
//! "not yet" too (a server still starting refuses connections) and is shown if time runs out,
//! unless it is an [`Abort`], which ends the wait at once (a component exited).

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// How often a check runs unless [`Eventually::every`] says otherwise: often enough that
/// measured durations are accurate to a tenth of a second, rarely enough to cost nothing.
const EVERY: Duration = Duration::from_millis(50);

/// Waits for `what` up to `bound`; run it with [`Eventually::until`] or
/// [`Eventually::until_blocking`].
pub fn eventually(what: impl Into<String>, bound: Duration) -> Eventually {
    Eventually {
        what: what.into(),
        bound,
        every: EVERY,
    }
}

/// A wait with a name, a bound and an interval.
#[derive(Debug, Clone)]
#[must_use = "a wait does nothing until `until` or `until_blocking` runs it"]
pub struct Eventually {
    what: String,
    bound: Duration,
    every: Duration,
}

/// An error that ends a wait at once instead of being retried.
#[derive(Debug)]
pub struct Abort(pub anyhow::Error);

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Abort {}

/// An error for a check to return when waiting longer cannot help: wraps `reason` in [`Abort`].
pub fn abort(reason: impl fmt::Display) -> anyhow::Error {
    Abort(anyhow!("{reason}")).into()
}

/// What one look found.
enum Look<T> {
    Done(T),
    Again,
}

impl Eventually {
    /// Checks every `every` instead of the default 50 ms (for checks that cost something).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Runs `check` until it yields a value; returns it and how long that took.
    pub async fn until<T, F, Fut>(&self, mut check: F) -> Result<(T, Duration)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let start = Instant::now();
        loop {
            match self.look(start, check().await)? {
                Look::Done(value) => return Ok((value, start.elapsed())),
                Look::Again => tokio::time::sleep(self.every).await,
            }
        }
    }

    /// [`Eventually::until`] for checks that block; sleeps the thread between looks.
    pub fn until_blocking<T>(
        &self,
        mut check: impl FnMut() -> Result<Option<T>>,
    ) -> Result<(T, Duration)> {
        let start = Instant::now();
        loop {
            match self.look(start, check())? {
                Look::Done(value) => return Ok((value, start.elapsed())),
                Look::Again => std::thread::sleep(self.every),
            }
        }
    }

    /// Decides after one check: done, again, or failed (aborted, or out of time).
    fn look<T>(&self, start: Instant, outcome: Result<Option<T>>) -> Result<Look<T>> {
        let last = match outcome {
            Ok(Some(value)) => return Ok(Look::Done(value)),
            Ok(None) => None,
            Err(e) if e.is::<Abort>() => return Err(e.context(self.what.clone())),
            Err(e) => Some(e),
        };
        if start.elapsed() <= self.bound {
            return Ok(Look::Again);
        }
        let error = anyhow!("{}: not within {:?}", self.what, self.bound);
        Err(match last {
            Some(e) => error.context(format!("last attempt: {e:#}")),
            None => error,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn returns_the_value_once_the_check_holds() {
        let looks = Cell::new(0);
        let (value, _) = eventually("the third look", Duration::from_secs(5))
            .every(Duration::from_millis(1))
            .until_blocking(|| {
                looks.set(looks.get() + 1);
                Ok((looks.get() == 3).then_some("done"))
            })
            .expect("holds on the third look");
        assert_eq!((value, looks.get()), ("done", 3));
    }

    #[test]
    fn fails_after_the_bound_naming_what_and_the_last_error() {
        let error = eventually("the moon", Duration::from_millis(30))
            .every(Duration::from_millis(5))
            .until_blocking(|| -> Result<Option<()>> { Err(anyhow!("connection refused")) })
            .expect_err("never holds");
        let text = format!("{error:#}");
        assert!(text.contains("the moon: not within 30ms"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }

    #[test]
    fn an_abort_ends_the_wait_at_once() {
        let start = Instant::now();
        let error = eventually("the API server", Duration::from_secs(60))
            .until_blocking(|| -> Result<Option<()>> { Err(abort("etcd exited")) })
            .expect_err("aborted");
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(format!("{error:#}").contains("etcd exited"));
    }

    #[tokio::test]
    async fn the_async_wait_polls_the_same_way() {
        let mut looks = 0;
        let ((), took) = eventually("two looks", Duration::from_secs(5))
            .every(Duration::from_millis(1))
            .until(|| {
                looks += 1;
                let done = looks == 2;
                async move { Ok(done.then_some(())) }
            })
            .await
            .expect("holds");
        assert_eq!(looks, 2);
        assert!(took < Duration::from_secs(5));
    }
}
