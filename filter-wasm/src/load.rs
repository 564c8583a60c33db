//! Load signals and the [`LoadScore`] built from them.

use serde::{Deserialize, Serialize};
use shadowmesh_wire::LatencySummary;

/// How loaded a cluster is, relative to its capacity: 1.0 means "at capacity".
///
/// It is the highest of the normalised signals (in-flight / `max_in_flight`,
/// latency / SLO, ORCA utilization): a cluster is as loaded as its most saturated
/// resource, and averaging would hide exactly the saturation we redirect for.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct LoadScore(pub f64);

/// The raw inputs of a [`LoadScore`] for one cluster at one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadSignals {
    /// Mean concurrency over the last tick (see [`concurrency`]).
    pub concurrency: f64,
    /// Concurrency at 100% load.
    pub max_in_flight: u32,
    /// Smoothed latency, if any request completed recently.
    pub latency_ewma_ms: Option<f64>,
    /// Latency at 100% load, if configured.
    pub latency_slo_ms: Option<f64>,
    /// Fresh ORCA utilization, if the upstream reports one.
    pub orca_utilization: Option<f64>,
}

impl LoadSignals {
    /// Combines the signals into a score.
    ///
    /// ```
    /// use shadowmesh_filter::load::{LoadScore, LoadSignals};
    /// let s = LoadSignals { concurrency: 4.0, max_in_flight: 8, orca_utilization: Some(0.9), ..Default::default() };
    /// assert_eq!(s.score(), LoadScore(0.9));
    /// ```
    pub fn score(&self) -> LoadScore {
        let mut score = self.concurrency / f64::from(self.max_in_flight.max(1));
        if let (Some(lat), Some(slo)) = (self.latency_ewma_ms, self.latency_slo_ms) {
            score = score.max(lat / slo);
        }
        if let Some(u) = self.orca_utilization {
            score = score.max(u);
        }
        LoadScore(if score.is_finite() {
            score.max(0.0)
        } else {
            0.0
        })
    }
}

/// Mean concurrency over a window, by Little's law: the summed latency of the requests that
/// completed in the window divided by its length. The instantaneous in-flight count is a
/// floor, so a stalled upstream (nothing completing) still shows as loaded.
pub fn concurrency(latency_sum_ms: f64, window_ms: f64, in_flight_now: u64) -> f64 {
    let little = if window_ms > 0.0 {
        latency_sum_ms / window_ms
    } else {
        0.0
    };
    little.max(in_flight_now as f64)
}

/// Exponentially weighted moving average.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    /// Adds a sample with weight `alpha` (0..=1).
    pub fn observe(&mut self, sample: f64, alpha: f64) {
        if !sample.is_finite() {
            return;
        }
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + alpha * (sample - v),
        });
    }

    /// Current average, `None` before the first sample.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// Sub-buckets per power of two (as a bit count): 16 per octave.
const SUB_BITS: usize = 4;
const SUB: usize = 1 << SUB_BITS;
/// Number of buckets of [`LatencyHistogram`]: 16 per power of two, 1 µs to ~70 minutes.
const BUCKETS: usize = 32 * SUB;

/// A fixed-size, mergeable latency histogram (16 log-buckets per octave, ≤ 3.2% error).
///
/// Workers add their local histograms into one shared copy each tick, so it must merge by
/// plain addition and serialise compactly; that rules out a general-purpose HDR histogram
/// inside the Wasm VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Sparse `(bucket, count)` pairs in the serialised form.
    #[serde(with = "sparse")]
    counts: [u64; BUCKETS],
    /// Number of samples.
    pub count: u64,
    /// Sum of samples in microseconds.
    pub sum_us: u64,
    /// Largest sample in microseconds.
    pub max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; BUCKETS],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let octave = 63 - us.leading_zeros() as usize; // floor(log2)
    // The SUB_BITS bits below the leading one pick the sub-bucket within the octave.
    let sub = if octave >= SUB_BITS {
        ((us >> (octave - SUB_BITS)) as usize) & (SUB - 1)
    } else {
        ((us << (SUB_BITS - octave)) as usize) & (SUB - 1)
    };
    (octave * SUB + sub).min(BUCKETS - 1)
}

fn bucket_lower_us(b: usize) -> f64 {
    let (octave, sub) = (b / SUB, b % SUB);
    (1u64 << octave) as f64 * (1.0 + sub as f64 / SUB as f64)
}

fn bucket_upper_us(b: usize) -> f64 {
    bucket_lower_us(b + 1).max(bucket_lower_us(b))
}

impl LatencyHistogram {
    /// Records one latency in microseconds.
    pub fn record(&mut self, us: u64) {
        self.counts[bucket_of(us)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram into this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `q`-quantile in microseconds (middle of its bucket, capped at the max).
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let mid = (bucket_lower_us(b) + bucket_upper_us(b)) / 2.0;
                return mid.min(self.max_us as f64);
            }
        }
        self.max_us as f64
    }

    /// The wire summary, in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count,
            mean: self.sum_us as f64 / self.count as f64 / 1e3,
            p50: self.quantile_us(0.5) / 1e3,
            p90: self.quantile_us(0.9) / 1e3,
            p99: self.quantile_us(0.99) / 1e3,
            max: self.max_us as f64 / 1e3,
        }
    }
}

mod sparse {
    use super::BUCKETS;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(counts: &[u64; BUCKETS], s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u16, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| (b as u16, *c))
            .collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; BUCKETS], D::Error> {
        let pairs = Vec::<(u16, u64)>::deserialize(d)?;
        let mut counts = [0; BUCKETS];
        for (b, c) in pairs {
            let slot = counts
                .get_mut(b as usize)
                .ok_or_else(|| serde::de::Error::custom("bucket out of range"))?;
            *slot += c;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_takes_the_most_saturated_signal() {
        let mut s = LoadSignals {
            concurrency: 6.0,
            max_in_flight: 8,
            ..Default::default()
        };
        assert_eq!(s.score(), LoadScore(0.75));
        s.latency_ewma_ms = Some(90.0);
        assert_eq!(s.score(), LoadScore(0.75), "latency ignored without an SLO");
        s.latency_slo_ms = Some(100.0);
        assert_eq!(s.score(), LoadScore(0.9));
        s.orca_utilization = Some(0.5);
        assert_eq!(s.score(), LoadScore(0.9));
    }

    #[test]
    fn concurrency_is_littles_law_with_a_floor() {
        assert_eq!(concurrency(500.0, 100.0, 2), 5.0);
        assert_eq!(concurrency(0.0, 100.0, 7), 7.0);
        assert_eq!(concurrency(10.0, 0.0, 0), 0.0);
    }

    #[test]
    fn histogram_quantiles_are_within_bucket_error() {
        let mut h = LatencyHistogram::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        for (q, exact) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let got = h.quantile_us(q);
            assert!(
                (got - exact).abs() / exact < 0.035,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.summary().max, 10.0);
    }

    #[test]
    fn histogram_merges_and_round_trips() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.record(100);
        b.record(100_000);
        a.merge(&b);
        let json = serde_json::to_string(&a).unwrap();
        let back: LatencyHistogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.count, 2);
        assert!(
            serde_json::from_str::<LatencyHistogram>(
                r#"{"counts":[[9999,1]],"count":1,"sum_us":1,"max_us":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket_of(us);
            assert!(b >= last);
            assert!(
                bucket_upper_us(b) >= us as f64 && bucket_lower_us(b) <= us.max(1) as f64,
                "{us} in {b}"
            );
            last = b;
        }
    }
}
