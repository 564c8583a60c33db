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
    /// cluster was seen to queue below it ([`CapacityEstimate::effective`]).
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

/// What one cluster did during one tick, as [`CapacityEstimate::observe`] reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TickLoad {
    /// Requests that completed.
    pub completed: u64,
    /// Their summed latency, ms.
    pub latency_sum_ms: f64,
    /// Mean concurrency over the tick.
    pub concurrency: f64,
    /// Requests completed per ms (each worker's count over its own span).
    pub throughput_per_ms: f64,
    /// Length of the tick, ms.
    pub elapsed_ms: f64,
}

/// A cluster's concurrency is "calm" below this share of its capacity: there its mean
/// latency is its unloaded latency.
const CALM_LOAD: f64 = 0.5;
/// Weight of a calm tick in the unloaded latency (of what came before: `1 −` it).
const BASE_ALPHA: f64 = 0.05;
/// A tick queues when its mean latency is at least this multiple of the unloaded one — its
/// requests waited as long as they were served: a deep queue, which a run of slow requests
/// does not imitate (a tick's mean of 30 exponential service times is twice its mean once
/// in a million) — and at least one more request was in flight than its servers were busy.
const QUEUE_RATIO: f64 = 2.0;
/// Fewest completions for a tick to judge queueing by: the mean of fewer exponential
/// service times is too often twice their mean by chance alone.
const TICK_MIN_COMPLETED: u64 = 20;
/// Queueing ticks remembered, and how many make a knee: a second of them at the default
/// tick, wherever they fell (a primary held inside its queue oscillates: half its ticks
/// queue)…
const SAMPLES: usize = 20;
const KNEE_SAMPLES: usize = 10;
/// …if they are at least this share of the last [`JUDGED_TICKS`] ticks: a primary held
/// inside its queue queues every few ticks, a right one only now and then (an onset, a
/// burst of slow requests).
const QUEUED_SHARE: f64 = 0.2;
const JUDGED_TICKS: usize = 100;
/// A knee counts only this far below `max_in_flight`: nearer, it may be the measurement's
/// own noise around a `max_in_flight` that is right.
const KNEE_MARGIN: f64 = 0.75;
/// Completions a seeded unloaded latency counts as: a few calm ticks' worth, so the new
/// holder's own observations soon outweigh it.
const SEED_COMPLETIONS: f64 = 50.0;
/// A tick that served this much more than the knee at once, without a queue, forgets it.
const FORGET_ABOVE: f64 = 1.1;
/// Queueing samples older than this are forgotten: a knee no tick has shown for two
/// minutes is tested again (while it holds the load below itself, nothing queues).
const SAMPLE_LIFE_MS: f64 = 120_000.0;

/// The concurrency at which a cluster starts to queue, learned from its own latency: the
/// check of `max_in_flight` against what the cluster actually serves at once.
///
/// While requests wait, every server of the cluster is busy, and the number of busy
/// servers is the throughput times the unloaded latency (Little's law applied to the
/// servers alone, whatever the service-time distribution). So: learn the mean latency of
/// calm ticks; a tick whose mean latency is twice that and whose concurrency exceeds its
/// busy servers queues, and its throughput × unloaded latency is one sample of the
/// cluster's parallelism. The median of the last [`SAMPLES`] such samples is the *knee*,
/// once there are [`KNEE_SAMPLES`] and a fifth of the recent ticks queued (then it stays
/// while queueing ticks keep coming, within two minutes). A `max_in_flight` above the knee puts the target
/// inside the queue, where the load no longer follows the traffic (a queue only grows or
/// drains) and no share holds it; the score then counts concurrency against the knee
/// ([`CapacityEstimate::effective`]), and the filter warns with the field named. A tick
/// that served more than the knee at once without queueing forgets it, and so do two
/// minutes without a queueing tick.
///
/// A cluster whose every request became twice as slow reads the same as one whose requests
/// wait: its load is then counted against what it would serve at once at its unloaded
/// speed — it is slower, so it is more loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapacityEstimate {
    /// Calm ticks' latency and completions, decayed: their ratio is the unloaded latency
    /// per request (a mean of tick means would weigh a quiet tick's few like a busy one's
    /// many).
    base_sum_ms: f64,
    base_count: f64,
    /// Time observed so far (ms): the clock samples are dated by.
    clock_ms: f64,
    /// Busy servers of recent queueing ticks and when they were taken, newest last.
    samples: std::collections::VecDeque<(f64, f64)>,
    /// Whether each of the last judged ticks queued, newest last.
    judged: std::collections::VecDeque<bool>,
    knee: Option<f64>,
    /// The knee reported last, to report only news.
    reported: Option<f64>,
}

/// What a tick showed about a cluster's capacity, when it changed the estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KneeFinding {
    /// The knee: requests served at once before requests queue.
    pub knee: f64,
    /// Mean latency of the tick that made it, ms.
    pub latency_ms: f64,
    /// Unloaded latency, ms.
    pub base_latency_ms: f64,
    /// Mean concurrency of that tick.
    pub concurrency: f64,
}

impl CapacityEstimate {
    /// Capacity to count load against: `max_in_flight`, or the knee where it is clearly
    /// lower.
    pub fn effective(&self, max_in_flight: u32) -> f64 {
        let m = f64::from(max_in_flight.max(1));
        match self.knee {
            Some(k) if k < KNEE_MARGIN * m => k.max(1.0),
            _ => m,
        }
    }

    /// The knee, if one was found (whether or not it is below `max_in_flight`).
    pub fn knee(&self) -> Option<f64> {
        self.knee
    }

    /// Starts from what another estimate learned (a worker taking the controller lease over
    /// from one that held it): an unloaded latency of `base_latency_ms` as if from a few
    /// calm ticks, and a knee as if just seen (0 for either: nothing).
    pub fn seed(&mut self, base_latency_ms: f64, knee: f64) {
        if base_latency_ms.is_finite() && base_latency_ms > 0.0 && self.base_count == 0.0 {
            self.base_count = SEED_COMPLETIONS;
            self.base_sum_ms = base_latency_ms * SEED_COMPLETIONS;
        }
        if knee.is_finite() && knee >= 1.0 && self.knee.is_none() {
            self.knee = Some(knee);
            self.samples = std::iter::repeat_n((knee, self.clock_ms), KNEE_SAMPLES).collect();
        }
    }

    /// The unloaded latency learned so far, ms.
    pub fn base_latency_ms(&self) -> Option<f64> {
        (self.base_count > 0.0).then(|| self.base_sum_ms / self.base_count)
    }

    /// Takes in one tick. Returns a finding when the knee newly falls clearly below
    /// `max_in_flight` or moves by more than a tenth while it is.
    pub fn observe(&mut self, tick: TickLoad, max_in_flight: u32) -> Option<KneeFinding> {
        if tick.completed == 0 || !tick.latency_sum_ms.is_finite() || tick.elapsed_ms <= 0.0 {
            return None;
        }
        self.clock_ms += tick.elapsed_ms;
        while self
            .samples
            .front()
            .is_some_and(|(_, at)| self.clock_ms - at > SAMPLE_LIFE_MS)
        {
            self.samples.pop_front();
        }
        if self.samples.len() < KNEE_SAMPLES {
            self.knee = None;
        }
        let mean = tick.latency_sum_ms / tick.completed as f64;
        if tick.concurrency <= CALM_LOAD * self.effective(max_in_flight) {
            let keep = 1.0 - BASE_ALPHA;
            self.base_sum_ms = keep * self.base_sum_ms + tick.latency_sum_ms;
            self.base_count = keep * self.base_count + tick.completed as f64;
        }
        if tick.completed < TICK_MIN_COMPLETED {
            return None;
        }
        let base = self.base_latency_ms().filter(|b| *b > 0.0)?;
        let busy = tick.throughput_per_ms * base;
        let queued = mean >= QUEUE_RATIO * base && tick.concurrency >= busy + 1.0;
        if self.judged.len() == JUDGED_TICKS {
            self.judged.pop_front();
        }
        self.judged.push_back(queued);
        if queued {
            if self.samples.len() == SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back((busy, self.clock_ms));

            let often = self.judged.iter().filter(|q| **q).count() as f64
                >= QUEUED_SHARE * self.judged.len() as f64;
            if self.samples.len() >= KNEE_SAMPLES && (often || self.knee.is_some()) {
                let mut v: Vec<f64> = self.samples.iter().map(|(b, _)| *b).collect();
                v.sort_by(f64::total_cmp);
                self.knee = Some(v[v.len() / 2]);
            }
        } else if self
            .knee
            .is_some_and(|k| tick.concurrency > FORGET_ABOVE * k && mean < QUEUE_RATIO * base)
        {
            // It served more at once than the knee, without a queue: the knee was wrong
            // or the cluster grew.
            self.knee = None;
            self.samples.clear();
            self.judged.clear();
        }
        let m = f64::from(max_in_flight.max(1));
        let below = self.knee.filter(|k| *k < KNEE_MARGIN * m);
        let news = match (self.reported, below) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(r), Some(k)) => (k - r).abs() > 0.1 * r,
        };
        if below.is_none() {
            self.reported = None;
        }
        news.then(|| {
            self.reported = below;
            KneeFinding {
                knee: below.unwrap_or(m),
                latency_ms: mean,
                base_latency_ms: base,
                concurrency: tick.concurrency,
            }
        })
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

    #[track_caller]
    fn assert_close(got: f64, want: f64, why: &str) {
        assert!((got - want).abs() < 1e-6, "{got} != {want} {why}");
    }

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

    /// `ticks` ticks of 100 ms of a cluster with `servers` servers of `base` ms each,
    /// serving `concurrency` requests at once (a queue when above `servers`).
    fn ticks(servers: f64, base: f64, concurrency: f64, ticks: u32) -> Vec<TickLoad> {
        let busy = concurrency.min(servers);
        let latency = base * concurrency.max(servers) / servers;
        let completed = (busy / base * 100.0).round();
        (0..ticks)
            .map(|_| TickLoad {
                completed: completed as u64,
                latency_sum_ms: completed * latency,
                concurrency,
                throughput_per_ms: completed / 100.0,
                elapsed_ms: 100.0,
            })
            .collect()
    }

    fn feed(e: &mut CapacityEstimate, ticks: Vec<TickLoad>, m: u32) -> Vec<KneeFinding> {
        ticks.into_iter().filter_map(|t| e.observe(t, m)).collect()
    }

    #[test]
    fn a_queue_below_max_in_flight_becomes_the_capacity() {
        let mut e = CapacityEstimate::default();
        // Calm: 2 of 8 servers busy, 20 ms each; max_in_flight says 16.
        assert!(feed(&mut e, ticks(8.0, 20.0, 2.0, 20), 16).is_empty());
        assert_close(e.base_latency_ms().unwrap_or(f64::NAN), 20.0, "");
        assert_close(e.effective(16), 16.0, "no queue seen yet");
        // 12 in flight on 8 servers: latency 30 ms, 1.5× — a queue, not a deep one.
        assert!(feed(&mut e, ticks(8.0, 20.0, 12.0, 10), 16).is_empty());
        assert_eq!(e.knee(), None);
        // 18 in flight: latency 45 ms, 8 busy. Nine ticks are not enough, the tenth is
        // (and a fifth of the 40 ticks judged queued).
        assert!(feed(&mut e, ticks(8.0, 20.0, 18.0, 9), 16).is_empty());
        let found = feed(&mut e, ticks(8.0, 20.0, 18.0, 1), 16);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = found[0];
        assert_close(f.knee, 8.0, "");
        assert_close(f.latency_ms, 45.0, "");
        assert_close(f.base_latency_ms, 20.0, "");
        assert_close(f.concurrency, 18.0, "");
        assert_close(e.effective(16), 8.0, "");
        assert_close(e.effective(6), 6.0, "never above max_in_flight");
        assert!(
            feed(&mut e, ticks(8.0, 20.0, 18.0, 10), 16).is_empty(),
            "the same knee again is no news"
        );
        // Ticks that queued and ticks that did not, in turn (a primary held inside its
        // queue oscillates): the queueing ones still count.
        let mut e2 = CapacityEstimate::default();
        feed(&mut e2, ticks(8.0, 20.0, 2.0, 20), 16);
        for _ in 0..10 {
            feed(&mut e2, ticks(8.0, 20.0, 20.0, 1), 16);
            feed(&mut e2, ticks(8.0, 20.0, 5.0, 1), 16);
        }
        assert_close(e2.effective(16), 8.0, "");
        // Serving 12 at once without a queue (the cluster grew): the knee is forgotten.
        assert!(feed(&mut e, ticks(16.0, 20.0, 12.0, 1), 16).is_empty());
        assert_eq!(e.knee(), None);
        assert_close(e.effective(16), 16.0, "");
    }

    #[test]
    fn a_queue_now_and_then_makes_no_knee() {
        let mut e = CapacityEstimate::default();
        feed(&mut e, ticks(8.0, 20.0, 2.0, 20), 16);
        // One deep-queue tick in six (an onset, a burst of slow requests): after 120
        // ticks, twenty samples, but not a fifth of the ticks.
        for _ in 0..20 {
            feed(&mut e, ticks(8.0, 20.0, 6.0, 5), 16);
            feed(&mut e, ticks(8.0, 20.0, 18.0, 1), 16);
        }
        assert_eq!(e.knee(), None);
        // One in four is.
        for _ in 0..20 {
            feed(&mut e, ticks(8.0, 20.0, 6.0, 3), 16);
            feed(&mut e, ticks(8.0, 20.0, 18.0, 1), 16);
        }
        assert_close(e.knee().unwrap_or(f64::NAN), 8.0, "");
    }

    #[test]
    fn no_knee_without_a_queue_or_near_max_in_flight() {
        let mut e = CapacityEstimate::default();
        feed(&mut e, ticks(8.0, 20.0, 2.0, 20), 8);
        // Busy up to all 8 servers, never waiting: no knee however long.
        assert!(feed(&mut e, ticks(8.0, 20.0, 8.0, 100), 8).is_empty());
        assert_eq!(e.knee(), None);
        // Latency up by two thirds (a slower dependency, or requests that wait a little):
        // not a deep queue.
        let slow = TickLoad {
            completed: 30,
            latency_sum_ms: 30.0 * 33.0,
            concurrency: 9.9,
            throughput_per_ms: 30.0 / 100.0,
            elapsed_ms: 100.0,
        };
        assert!(feed(&mut e, vec![slow; 20], 8).is_empty());
        assert_eq!(e.knee(), None);
        // A knee at max_in_flight (the onset of a surge queues a correct primary too) is
        // no finding and changes nothing.
        assert!(feed(&mut e, ticks(8.0, 20.0, 18.0, 20), 8).is_empty());
        assert_close(e.knee().unwrap_or(f64::NAN), 8.0, "");
        assert_close(e.effective(8), 8.0, "");
        // It counts from a fifth below.
        assert_close(e.effective(10), 10.0, "8 is not below 0.75 × 10");
        assert_close(e.effective(11), 8.0, "8 is below 0.75 × 11");
        // Too few completions say nothing of queueing.
        let quiet = TickLoad {
            completed: 19,
            latency_sum_ms: 19.0 * 100.0,
            concurrency: 20.0,
            throughput_per_ms: 19.0 / 100.0,
            elapsed_ms: 100.0,
        };
        let before = (e.knee(), e.samples.clone(), e.judged.clone());
        assert!(feed(&mut e, vec![quiet; 20], 8).is_empty());
        assert_eq!((e.knee(), e.samples.clone(), e.judged.clone()), before);
    }

    #[test]
    fn the_unloaded_latency_is_learned_only_from_calm_ticks() {
        let mut e = CapacityEstimate::default();
        // Never calm: nothing learned, so no queue can be judged.
        feed(&mut e, ticks(8.0, 20.0, 12.0, 30), 16);
        assert_eq!(e.base_latency_ms(), None);
        assert_eq!(e.knee(), None);
        let tick = |latency_ms: f64, concurrency: f64| TickLoad {
            completed: 10,
            latency_sum_ms: 10.0 * latency_ms,
            concurrency,
            throughput_per_ms: 0.1,
            elapsed_ms: 100.0,
        };
        e.observe(tick(20.0, 2.0), 16);
        assert_close(e.base_latency_ms().unwrap_or(f64::NAN), 20.0, "");
        e.observe(tick(40.0, 8.0), 16);
        // (0.95 × 200 + 400) / (0.95 × 10 + 10): each request alike.
        let expected = (0.95 * 200.0 + 400.0) / (0.95 * 10.0 + 10.0);
        assert!((e.base_latency_ms().unwrap() - expected).abs() < 1e-9);
        e.observe(tick(40.0, 8.01), 16);
        assert!(
            (e.base_latency_ms().unwrap() - expected).abs() < 1e-9,
            "above 0.5 × 16: not calm"
        );
        // A quiet tick's few requests weigh by their number.
        let mut f = CapacityEstimate::default();
        f.observe(tick(20.0, 2.0), 16);
        f.observe(
            TickLoad {
                completed: 1,
                latency_sum_ms: 200.0,
                concurrency: 2.0,
                throughput_per_ms: 1.0 / 100.0,
                elapsed_ms: 100.0,
            },
            16,
        );
        let expected = (0.95 * 200.0 + 200.0) / (0.95 * 10.0 + 1.0);
        assert!((f.base_latency_ms().unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn a_seeded_estimate_starts_from_what_was_learned() {
        let mut e = CapacityEstimate::default();
        e.seed(20.0, 8.0);
        assert_close(e.base_latency_ms().unwrap_or(f64::NAN), 20.0, "");
        assert_close(e.effective(16), 8.0, "");
        // Its own calm ticks soon count more.
        feed(&mut e, ticks(8.0, 30.0, 2.0, 20), 16);
        assert!(e.base_latency_ms().unwrap() > 28.0);
        // Nothing to seed with: nothing seeded.
        let mut f = CapacityEstimate::default();
        f.seed(0.0, 0.0);
        assert_eq!((f.base_latency_ms(), f.knee()), (None, None));
        // A seed never overrides what was learned.
        f.observe(
            TickLoad {
                completed: 10,
                latency_sum_ms: 100.0,
                concurrency: 1.0,
                throughput_per_ms: 10.0 / 100.0,
                elapsed_ms: 100.0,
            },
            16,
        );
        f.seed(50.0, 4.0);
        assert_close(f.base_latency_ms().unwrap_or(f64::NAN), 10.0, "");
    }

    #[test]
    fn a_knee_no_tick_has_shown_for_two_minutes_is_tested_again() {
        let mut e = CapacityEstimate::default();
        feed(&mut e, ticks(8.0, 20.0, 2.0, 20), 16);
        feed(&mut e, ticks(8.0, 20.0, 18.0, 10), 16);
        assert_close(e.effective(16), 8.0, "");
        // Held at 6.4 (the target of 8) for two minutes: nothing queues.
        feed(&mut e, ticks(8.0, 20.0, 6.4, 1_190), 16);
        assert_close(e.effective(16), 8.0, "119 s after the last queueing tick");
        feed(&mut e, ticks(8.0, 20.0, 6.4, 11), 16);
        assert_close(e.effective(16), 16.0, "120 s: forgotten");
        assert_eq!(e.knee(), None);
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
