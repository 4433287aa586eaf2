//! Exponential backoff with jitter, for unreachable sources and hubs.

use std::time::Duration;

/// Delays of 0.5 s doubling up to a ceiling, each drawn from [d/2, d].
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The next nominal delay.
    next: Duration,
    /// First delay.
    base: Duration,
    /// Ceiling.
    max: Duration,
}

impl Backoff {
    /// A backoff from `base` doubling to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            next: base,
            base,
            max,
        }
    }

    /// The default for hubs and sources: 0.5 s to 60 s.
    pub fn standard() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(60))
    }

    /// The next delay (jittered); doubles the nominal delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// The longest the next delay can be, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// After a success: start again from the base.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (d, nominal) in delays.iter().zip([1u64, 2, 4, 8, 8, 8]) {
            let n = Duration::from_secs(nominal);
            assert!(
                *d >= n / 2 && *d <= n,
                "{d:?} not within [{:?}, {n:?}]",
                n / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
