//! Log lines that would repeat many times a second (one per refused write, say): the first
//! is logged at once, then at most one per interval, saying how many were held back.

use crate::sync::Lock as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    interval: Duration,
    /// When a line was last let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Throttle {
        Throttle { interval, state: Mutex::new((None, 0)) }
    }

    /// Whether to log now; if so, how many lines were held back since the last one.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.locked();
        let (last, held_back) = &mut *state;
        if last.is_some_and(|last| now.duration_since(last) < self.interval) {
            *held_back += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        for i in 1..=5 {
            assert_eq!(throttle.admit_at(start + Duration::from_secs(i)), None);
        }
        assert_eq!(throttle.admit_at(start + Duration::from_secs(10)), Some(5));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(11)), None);
    }
}
