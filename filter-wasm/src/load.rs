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
    /// Mean concurrency over the last tick ([`BusyClock`]).
    pub concurrency: f64,
    /// Concurrency at 100% load: the configured `max_in_flight`, or less where the
    /// cluster was seen to queue below it ([`crate::capacity::CapacityEstimate::effective`]).
    pub capacity: f64,
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
    /// let s = LoadSignals { concurrency: 4.0, capacity: 8.0, orca_utilization: Some(0.9), ..Default::default() };
    /// assert_eq!(s.score(), LoadScore(0.9));
    /// ```
    pub fn score(&self) -> LoadScore {
        let mut score = self.concurrency / self.capacity.max(1.0);
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

/// The in-flight time of one worker's requests to one cluster: the integral of its
/// in-flight count over time, advanced at every start and end.
///
/// Divided by a window's length it is the window's mean concurrency — exactly, unlike
/// Little's law over the requests that *completed* in the window (which misses the time of
/// requests still running, so a stalled upstream looks idle) or the in-flight count at one
/// instant (a noisy sample; used as a floor it biased the load upwards, so the primary was
/// held below its target). Each request starts and ends on one worker, so the workers'
/// integrals add up to the Envoy's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusyClock {
    in_flight: u64,
    since_ns: u64,
    busy_ns: u64,
}

impl BusyClock {
    /// A request started at `now_ns`.
    pub fn start(&mut self, now_ns: u64) {
        self.advance(now_ns);
        self.in_flight += 1;
    }

    /// A request ended at `now_ns`.
    pub fn finish(&mut self, now_ns: u64) {
        self.advance(now_ns);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The in-flight time since the last take, in µs, up to `now_ns` (the part below a
    /// microsecond is kept for the next take).
    pub fn take_us(&mut self, now_ns: u64) -> u64 {
        self.advance(now_ns);
        let us = self.busy_ns / 1_000;
        self.busy_ns -= us * 1_000;
        us
    }

    fn advance(&mut self, now_ns: u64) {
        // A clock that steps back adds nothing (and is not followed back).
        if now_ns > self.since_ns {
            let dt = now_ns - self.since_ns;
            self.busy_ns = self
                .busy_ns
                .saturating_add(self.in_flight.saturating_mul(dt));
            self.since_ns = now_ns;
        }
    }
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
            capacity: 8.0,
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
    fn busy_clock_integrates_the_in_flight_count() {
        let mut c = BusyClock::default();
        c.start(1_000_000); // 1 ms
        c.start(2_000_000);
        c.finish(4_000_000); // 1 in flight for 1 ms, 2 for 2 ms: 5 ms so far
        assert_eq!(c.in_flight(), 1);
        assert_eq!(
            c.take_us(5_000_000),
            6_000,
            "and one still running until 5 ms"
        );
        assert_eq!(c.take_us(5_000_000), 0, "taken");
        c.finish(5_000_500);
        assert_eq!(c.take_us(9_000_000), 0, "the sub-µs rest is kept: 500 ns");
        c.start(9_000_000);
        c.finish(9_000_500);
        assert_eq!(c.take_us(9_000_500), 1, "500 ns + 500 ns");
        // A clock that steps back adds nothing and is not followed.
        c.start(8_000_000);
        assert_eq!(c.take_us(9_001_500), 1, "1 in flight from 9,000,500 ns on");
        c.finish(u64::MAX);
        c.finish(u64::MAX);
        assert_eq!(c.in_flight(), 0, "an unmatched finish saturates");
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
        // Sparse: only the two buckets that counted something travel.
        let wire: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(wire["counts"].as_array().unwrap().len(), 2, "{json}");
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
    fn ewma_starts_at_its_first_sample_then_moves_alpha_of_the_way() {
        let mut e = Ewma::default();
        assert_eq!(e.get(), None);
        e.observe(10.0, 0.25);
        assert_eq!(e.get(), Some(10.0), "the first sample is the average");
        e.observe(50.0, 0.25);
        assert_eq!(e.get(), Some(20.0), "a quarter of the way from 10 to 50");
        e.observe(f64::NAN, 0.25);
        e.observe(f64::INFINITY, 0.25);
        assert_eq!(e.get(), Some(20.0), "non-finite samples are ignored");
        e.observe(20.0, 1.0);
        e.observe(0.0, 1.0);
        assert_eq!(e.get(), Some(0.0), "alpha 1 follows the last sample");
    }

    #[test]
    fn a_merged_histogram_counts_both_sides() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        for _ in 0..3 {
            a.record(100);
        }
        b.record(100_000);
        a.merge(&b);
        assert_eq!((a.count, a.sum_us, a.max_us), (4, 100_300, 100_000));
        // Three of four samples near 100 µs, the fourth near 100 ms: the counts were added
        // bucket by bucket, so the median stays at 100 µs and the top quantile is b's.
        assert!(
            (a.quantile_us(0.5) - 100.0).abs() < 3.5,
            "{}",
            a.quantile_us(0.5)
        );
        assert!(
            (a.quantile_us(1.0) - 100_000.0).abs() < 3_500.0,
            "{}",
            a.quantile_us(1.0)
        );
    }

    #[test]
    fn the_summary_is_in_milliseconds() {
        let mut h = LatencyHistogram::default();
        for us in 1_000..=2_000u64 {
            h.record(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 1_001);
        let near = |got: f64, want: f64| (got - want).abs() / want < 0.035;
        assert!(near(s.mean, 1.5), "mean {}", s.mean);
        assert!(near(s.p50, 1.5), "p50 {}", s.p50);
        assert!(near(s.p90, 1.9), "p90 {}", s.p90);
        assert!(near(s.p99, 1.99), "p99 {}", s.p99);
        assert_eq!(s.max, 2.0);
        assert_eq!(
            LatencyHistogram::default().summary(),
            LatencySummary::default()
        );
    }

    #[test]
    fn latencies_beyond_the_last_bucket_land_in_it() {
        let mut h = LatencyHistogram::default();
        h.record(u64::MAX);
        h.record(1 << 40);
        assert_eq!(h.count, 2);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        // Read as the last bucket (about 70 minutes): beyond it nothing is told apart.
        let top = h.quantile_us(1.0);
        assert!(top >= bucket_lower_us(BUCKETS - 1) && top <= bucket_upper_us(BUCKETS - 1));
        assert_eq!(h.max_us, u64::MAX);
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
