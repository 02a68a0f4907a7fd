//! Per-destination OPTIONS round-trip statistics (Kamailio
//! `ds_ping_latency_stats`), with Kamailio 5.6's arithmetic so that
//! `dispatcher.list` shows the same numbers for the same samples and the
//! latency-aware algorithms (11 with `cc=1`, 13) decide as Kamailio does.
//!
//! Samples are whole milliseconds (Kamailio truncates its `timeval`
//! difference the same way). The average and standard deviation are
//! Welford's online algorithm; the estimator is an EWMA seeded with the
//! average for the first nine samples:
//!
//! ```text
//! count < 10:  EST = AVG
//! else:        EST = EST * alpha + sample * (1 - alpha)    (Kamailio 5.6)
//! ```
//!
//! Two Kamailio details are kept because they change the numbers: once
//! more than 10 samples show a standard deviation under 0.5 ms the count
//! jumps to 10000 ("trained": the average then barely moves), and past
//! 2^21 samples the count stops and the sum of squares decays instead.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Kamailio's count once the average is stable ("training_count").
const TRAINED_COUNT: u32 = 10_000;
/// Past this many samples the average becomes a weighted one.
const MAX_COUNT: u32 = 1 << 21;

/// Kamailio 5.6's `ds_latency_estimator_alpha` default, in thousandths.
pub const DEFAULT_ALPHA_PERMILLE: u16 = 900;

/// The estimator's weight of the previous estimate, in thousandths as
/// Kamailio takes it (its modparam has no floats): 1 to 999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Alpha(u16);

impl Alpha {
    /// `None` outside 1..=999 (0 would freeze nothing and 1000 freeze the
    /// estimate forever; Kamailio refuses both).
    pub fn from_permille(permille: u16) -> Option<Alpha> {
        (1..1000).contains(&permille).then_some(Alpha(permille))
    }

    pub fn permille(self) -> u16 {
        self.0
    }

    fn factor(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl Default for Alpha {
    fn default() -> Alpha {
        Alpha(DEFAULT_ALPHA_PERMILLE)
    }
}

/// One destination's statistics. Plain data: the dispatcher keeps it
/// behind a lock, the tests feed it sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencyStats {
    count: u32,
    /// Milliseconds.
    average: f64,
    /// Welford's sum of squared differences.
    m2: f64,
    stdev: f64,
    estimate: f64,
    min: i64,
    max: i64,
    timeouts: u32,
}

impl LatencyStats {
    /// A probe answered after `ms` milliseconds (any reply but a 408).
    pub fn sample(&mut self, ms: i64, alpha: Alpha) {
        if self.count < MAX_COUNT {
            self.count += 1;
        } else {
            self.m2 -= self.m2 / f64::from(self.count);
        }
        let sample = ms as f64;
        if self.count == 1 {
            *self = LatencyStats {
                count: 1,
                average: sample,
                m2: 0.0,
                stdev: 0.0,
                estimate: sample,
                min: ms,
                max: ms,
                timeouts: self.timeouts,
            };
        }
        if self.count > 10 && self.count < TRAINED_COUNT && self.stdev < 0.5 {
            self.count = TRAINED_COUNT;
        }
        self.min = self.min.min(ms);
        self.max = self.max.max(ms);
        if self.count > 1 {
            let delta = sample - self.average;
            self.average += delta / f64::from(self.count);
            let delta2 = sample - self.average;
            self.m2 += delta * delta2;
            self.stdev = (self.m2 / f64::from(self.count - 1)).sqrt();
        }
        self.estimate = if self.count < 10 {
            self.average
        } else {
            let a = alpha.factor();
            self.estimate * a + sample * (1.0 - a)
        };
    }

    /// A probe got no answer in time, or a 408 (Kamailio counts its local
    /// 408s); the averages are left alone.
    pub fn timeout(&mut self) {
        self.timeouts = self.timeouts.saturating_add(1);
    }

    /// Samples taken (10000 once trained, see the module docs).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Milliseconds.
    pub fn average(&self) -> f64 {
        self.average
    }

    /// Milliseconds.
    pub fn stdev(&self) -> f64 {
        self.stdev
    }

    /// The EWMA, milliseconds.
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// Milliseconds; 0 before the first sample.
    pub fn max(&self) -> i64 {
        self.max
    }

    pub fn timeouts(&self) -> u32 {
        self.timeouts
    }

    /// How far the estimate runs above the average, whole ms, never
    /// negative (Kamailio's `congestion_ms`, truncated to `int` as there).
    pub fn congestion_ms(&self) -> i64 {
        ((self.estimate - self.average) as i64).max(0)
    }
}

/// A node's statistics as the dispatcher shares them: the full record
/// behind a lock (probes write it, `dispatcher.list` reads it), and the
/// two whole-millisecond figures the algorithms read per call as atomics,
/// so that choosing a node takes no lock.
#[derive(Debug, Default)]
pub struct LatencyCell {
    stats: std::sync::Mutex<LatencyStats>,
    estimate_ms: AtomicI64,
    congestion_ms: AtomicI64,
}

impl LatencyCell {
    /// Applies `f` to the record and republishes the atomics.
    pub fn update(&self, f: impl FnOnce(&mut LatencyStats)) {
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut stats);
        // Kamailio reads the estimate into an `int`: truncated.
        self.estimate_ms.store(stats.estimate as i64, Relaxed);
        self.congestion_ms.store(stats.congestion_ms(), Relaxed);
    }

    pub fn get(&self) -> LatencyStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The estimate in whole ms (0 before any sample).
    pub fn estimate_ms(&self) -> i64 {
        self.estimate_ms.load(Relaxed)
    }

    /// [`LatencyStats::congestion_ms`].
    pub fn congestion_ms(&self) -> i64 {
        self.congestion_ms.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn alpha_is_range_checked() {
        assert_eq!(Alpha::from_permille(0), None);
        assert_eq!(Alpha::from_permille(1000), None);
        assert_eq!(Alpha::from_permille(1).map(Alpha::permille), Some(1));
        assert_eq!(Alpha::from_permille(999).map(Alpha::permille), Some(999));
        assert_eq!(Alpha::default().permille(), 900);
    }

    #[test]
    fn first_samples_average_and_deviation_by_hand() {
        let mut s = LatencyStats::default();
        let a = Alpha::default();
        s.sample(10, a);
        assert_eq!((s.count(), s.max()), (1, 10));
        assert!(close(s.average(), 10.0) && close(s.stdev(), 0.0) && close(s.estimate(), 10.0));
        s.sample(20, a);
        // mean 15, sample variance ((10-15)^2 + (20-15)^2) / 1 = 50
        assert!(close(s.average(), 15.0));
        assert!(close(s.stdev(), 50f64.sqrt()));
        assert!(close(s.estimate(), 15.0), "below 10 samples EST = AVG");
        s.sample(30, a);
        // mean 20, variance (100 + 0 + 100) / 2 = 100
        assert!(close(s.average(), 20.0));
        assert!(close(s.stdev(), 10.0));
        assert_eq!(s.max(), 30);
    }

    #[test]
    fn estimator_is_an_ewma_from_the_tenth_sample() {
        let a = Alpha::from_permille(900).unwrap();
        let mut s = LatencyStats::default();
        // 9 samples alternating 10/30: EST follows AVG.
        for i in 0..9 {
            s.sample(if i % 2 == 0 { 10 } else { 30 }, a);
        }
        let avg9 = (5.0 * 10.0 + 4.0 * 30.0) / 9.0;
        assert!(close(s.average(), avg9));
        assert!(close(s.estimate(), avg9));
        // The 10th: EST = 0.9 * EST + 0.1 * 100.
        s.sample(100, a);
        assert!(close(s.estimate(), 0.9 * avg9 + 0.1 * 100.0));
        let avg10 = (avg9 * 9.0 + 100.0) / 10.0;
        assert!(close(s.average(), avg10));
        // A low alpha follows the samples closely.
        let mut quick = LatencyStats::default();
        let low = Alpha::from_permille(100).unwrap();
        for _ in 0..9 {
            quick.sample(10, low);
        }
        quick.sample(110, low);
        assert!(close(quick.estimate(), 0.1 * 10.0 + 0.9 * 110.0));
        // EST 100, AVG 10 + 100 / 10 = 20.
        assert_eq!(quick.congestion_ms(), 80);
    }

    #[test]
    fn a_stable_node_is_trained_to_count_10000() {
        let a = Alpha::default();
        let mut s = LatencyStats::default();
        for _ in 0..11 {
            s.sample(5, a);
        }
        // stdev 0 < 0.5 after the 11th sample: count jumps.
        assert_eq!(s.count(), TRAINED_COUNT);
        // The average now barely moves: 5 + (105 - 5) / 10000.
        s.sample(105, a);
        assert!(close(s.average(), 5.0 + 100.0 / 10_001.0));
        assert_eq!(s.count(), TRAINED_COUNT + 1);
    }

    #[test]
    fn timeouts_count_apart_and_never_wrap() {
        let mut s = LatencyStats::default();
        s.timeout();
        s.timeout();
        assert_eq!(s.timeouts(), 2);
        assert_eq!(s.count(), 0);
        s.sample(7, Alpha::default());
        assert_eq!(s.timeouts(), 2, "the first sample keeps the timeouts");
        s.timeouts = u32::MAX;
        s.timeout();
        assert_eq!(s.timeouts(), u32::MAX);
    }

    #[test]
    fn congestion_is_never_negative() {
        let a = Alpha::from_permille(500).unwrap();
        let mut s = LatencyStats::default();
        for ms in [100, 100, 100, 100, 100, 100, 100, 100, 100, 1] {
            s.sample(ms, a);
        }
        assert!(s.estimate() < s.average());
        assert_eq!(s.congestion_ms(), 0);
    }
}
