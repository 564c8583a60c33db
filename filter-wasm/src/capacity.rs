//! The check of a cluster's `max_in_flight` against what it actually serves at once:
//! [`CapacityEstimate`] finds the *knee* — the concurrency above which requests queue —
//! from the cluster's own latency, and [`OrcaCapacity`] from the utilization it reports.
//! A `max_in_flight` clearly above either puts the load target inside the queue; the
//! controller reports it as a [`KneeFinding`] and the filter warns with the field named.

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
    /// Requests sent to the cluster per ms (the same way).
    pub arrivals_per_ms: f64,
    /// Length of the tick, ms.
    pub elapsed_ms: f64,
    /// The controller held the cluster at its load target during the tick (the primary
    /// while redirecting). Such a tick is never calm, whatever was sent: held at the
    /// target of a `max_in_flight` above what the cluster serves, its "calm" arrivals are
    /// its queue, and an unloaded latency learned there would hide the queue that finds
    /// the knee.
    pub held_at_target: bool,
}

/// A tick is "calm" when the work sent to the cluster (arrivals × unloaded latency) is at
/// most this share of its capacity: there its mean latency is its unloaded latency. Calm
/// is judged by what was *sent*, not by the concurrency it caused: a tick whose requests
/// happened to be quick holds fewer at once, and learning only from those would learn a
/// latency too low (by an eighth, for exponential service times at a quarter of capacity).
const CALM_LOAD: f64 = 0.5;
/// …and its concurrency at most this share: a cluster whose `max_in_flight` is far above
/// what it serves queues at an arrival rate that looks calm against `max_in_flight`, and
/// that queue is not its unloaded latency. (Concurrency this far above the calm share is
/// rare enough by chance alone not to bias the estimate.)
const CALM_CONCURRENCY: f64 = 0.6;
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
/// The knee is this quantile of the samples, above their median: a sample is too low when
/// a tick's throughput is read partly from a worker's previous span (one that missed its
/// flush counts with the rates it last showed, which lag a rising surge), and a knee too
/// low is the one that hurts — it holds the primary below what it serves, and nothing then
/// tests it. Higher, the samples' own noise (workers' spans end at different instants)
/// makes the knee too high. In the simulation's survey, the median let one false knee in
/// a thousand mixes through; 0.65 none, at a knee 5% high.
const KNEE_QUANTILE: f64 = 0.65;
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
/// cluster's parallelism. The [`KNEE_QUANTILE`] of the last [`SAMPLES`] such samples is the *knee*,
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
    reported: Reported,
}

/// What a tick showed about a cluster's capacity, when it changed the estimate: the
/// cluster serves clearly fewer requests at once than its `max_in_flight` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KneeFinding {
    /// The knee: requests served at once before requests queue.
    pub knee: f64,
    /// Mean concurrency of the tick that made it.
    pub concurrency: f64,
    /// What showed it.
    pub evidence: KneeEvidence,
}

/// How a [`KneeFinding`] was made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KneeEvidence {
    /// Requests waited: the tick's mean latency against the unloaded one ([`CapacityEstimate`]).
    Latency {
        /// Mean latency of the tick, ms.
        latency_ms: f64,
        /// Unloaded latency, ms.
        base_latency_ms: f64,
    },
    /// The cluster's own ORCA utilization, extrapolated to 1 ([`OrcaCapacity`]).
    Orca {
        /// Mean utilization reported during the tick.
        utilization: f64,
    },
}

/// The knee a finding last reported, so that only news is reported: a knee newly clearly
/// below `max_in_flight`, or one that moved by more than a tenth while it is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Reported(Option<f64>);

impl Reported {
    /// The knee to report now, given the knee clearly below `max_in_flight` (if any).
    fn news(&mut self, below: Option<f64>) -> Option<f64> {
        let news = match (self.0, below) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(r), Some(k)) => (k - r).abs() > 0.1 * r,
        };
        if below.is_none() || news {
            self.0 = below;
        }
        below.filter(|_| news)
    }
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
        let capacity = self.effective(max_in_flight);
        let sent = match self.base_latency_ms() {
            Some(base) => tick.arrivals_per_ms * base,
            // Nothing learned yet: the concurrency is all there is to judge by.
            None => tick.concurrency,
        };
        if !tick.held_at_target
            && sent <= CALM_LOAD * capacity
            && tick.concurrency <= CALM_CONCURRENCY * capacity
        {
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
                let rank = (KNEE_QUANTILE * v.len() as f64).ceil() as usize;
                self.knee = Some(v[rank.clamp(1, v.len()) - 1]);
            }
        } else if self
            .knee
            .is_some_and(|k| busy > FORGET_ABOVE * k && mean < QUEUE_RATIO * base)
        {
            // It served more at once than the knee, without a deep queue: the knee was
            // wrong or the cluster grew. (Served, not held: requests in flight include
            // those waiting in a queue too shallow to count as one.)
            self.knee = None;
            self.samples.clear();
            self.judged.clear();
        }
        let m = f64::from(max_in_flight.max(1));
        let below = self.knee.filter(|k| *k < KNEE_MARGIN * m);
        self.reported.news(below).map(|knee| KneeFinding {
            knee,
            concurrency: tick.concurrency,
            evidence: KneeEvidence::Latency {
                latency_ms: mean,
                base_latency_ms: base,
            },
        })
    }
}

/// Ticks whose reported utilization is below this say too little to extrapolate from.
const ORCA_MIN_UTILIZATION: f64 = 0.2;
/// Weight of one tick in the ORCA parallelism (of what came before: `1 −` it).
const ORCA_ALPHA: f64 = 0.05;
/// Ticks with a usable report before the ORCA parallelism counts.
const ORCA_TICKS: u32 = 20;

/// What a cluster serves at once by its own account: the concurrency the filter sees
/// divided by the utilization the cluster reports in ORCA (`endpoint-load-metrics`) —
/// where its utilization would reach 1. An application utilization of in-flight requests
/// over the server's parallelism gives that parallelism; a CPU utilization, the
/// concurrency at which the CPU saturates. A cluster that saturates neither (I/O-bound,
/// idle CPU) extrapolates far above its `max_in_flight` and is never reported: the check
/// only ever says "lower".
///
/// This only warns: the load score already counts the utilization itself
/// ([`crate::load::LoadSignals::orca_utilization`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrcaCapacity {
    /// Decayed sums over usable ticks: their ratio is the parallelism (a mean of ratios
    /// would weigh a nearly idle tick like a busy one).
    concurrency_sum: f64,
    utilization_sum: f64,
    ticks: u32,
    reported: Reported,
}

impl OrcaCapacity {
    /// Takes in one tick: its mean concurrency and the mean utilization reported during it
    /// (`None` when no report came). Returns a finding when the parallelism newly falls
    /// clearly below `max_in_flight` or moves by more than a tenth while it is.
    pub fn observe(
        &mut self,
        concurrency: f64,
        utilization: Option<f64>,
        max_in_flight: u32,
    ) -> Option<KneeFinding> {
        let u = utilization.filter(|u| u.is_finite() && *u >= ORCA_MIN_UTILIZATION)?;
        if !concurrency.is_finite() || concurrency <= 0.0 {
            return None;
        }
        let keep = 1.0 - ORCA_ALPHA;
        self.concurrency_sum = keep * self.concurrency_sum + concurrency;
        self.utilization_sum = keep * self.utilization_sum + u;
        self.ticks = self.ticks.saturating_add(1);
        let m = f64::from(max_in_flight.max(1));
        let below = self.parallelism().filter(|p| *p < KNEE_MARGIN * m);
        self.reported.news(below).map(|knee| KneeFinding {
            knee,
            concurrency,
            evidence: KneeEvidence::Orca { utilization: u },
        })
    }

    /// The parallelism the reports imply, once there were enough of them.
    pub fn parallelism(&self) -> Option<f64> {
        (self.ticks >= ORCA_TICKS && self.utilization_sum > 0.0)
            .then(|| self.concurrency_sum / self.utilization_sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn assert_close(got: f64, want: f64, why: &str) {
        assert!((got - want).abs() < 1e-6, "{got} != {want} {why}");
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
                arrivals_per_ms: completed / 100.0,
                elapsed_ms: 100.0,
                held_at_target: false,
            })
            .collect()
    }

    fn feed(e: &mut CapacityEstimate, ticks: Vec<TickLoad>, m: u32) -> Vec<KneeFinding> {
        ticks.into_iter().filter_map(|t| e.observe(t, m)).collect()
    }

    /// The knee is the 0.65 quantile of the queueing ticks' busy servers, above their
    /// median: a sample read low (a worker's lagging span) must not pull it down.
    #[test]
    fn the_knee_is_a_high_quantile_of_its_samples() {
        let mut e = CapacityEstimate::default();
        assert!(feed(&mut e, ticks(16.0, 20.0, 4.0, 30), 32).is_empty());
        // Ten queueing ticks (twice as many in flight as busy) with 4..=13 busy servers,
        // held at the target (none of them teaches the unloaded latency).
        let queued: Vec<TickLoad> = (4..=13)
            .flat_map(|b| ticks(f64::from(b), 20.0, 2.0 * f64::from(b), 1))
            .map(|t| TickLoad {
                held_at_target: true,
                ..t
            })
            .collect();
        feed(&mut e, queued, 32);
        // Sorted 4..=13: the 7th of 10 (the median would be the 5th, 8).
        assert_close(e.knee().unwrap_or(f64::NAN), 10.0, "0.65 quantile");
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
        let KneeEvidence::Latency {
            latency_ms,
            base_latency_ms,
        } = f.evidence
        else {
            panic!("{f:?}")
        };
        assert_close(latency_ms, 45.0, "");
        assert_close(base_latency_ms, 20.0, "");
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
            arrivals_per_ms: 30.0 / 100.0,
            elapsed_ms: 100.0,
            held_at_target: false,
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
            arrivals_per_ms: 19.0 / 100.0,
            elapsed_ms: 100.0,
            held_at_target: false,
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
        // Ten requests of `latency_ms` at `arrivals_per_ms`: Little's law sets the concurrency.
        let tick = |latency_ms: f64, arrivals_per_ms: f64| TickLoad {
            completed: 10,
            latency_sum_ms: 10.0 * latency_ms,
            concurrency: arrivals_per_ms * latency_ms,
            throughput_per_ms: arrivals_per_ms,
            arrivals_per_ms,
            elapsed_ms: 100.0,
            held_at_target: false,
        };
        e.observe(tick(20.0, 0.1), 16);
        assert_close(e.base_latency_ms().unwrap_or(f64::NAN), 20.0, "");
        // Sent: 0.2 × 20 = 4 of 16, calm, though its requests were slow.
        e.observe(tick(40.0, 0.2), 16);
        // (0.95 × 200 + 400) / (0.95 × 10 + 10): each request alike.
        let expected = (0.95 * 200.0 + 400.0) / (0.95 * 10.0 + 10.0);
        assert!((e.base_latency_ms().unwrap() - expected).abs() < 1e-9);
        // Sent: 0.27 × 30.3 = 8.2 of 16: not calm.
        e.observe(tick(40.0, 0.27), 16);
        assert!(
            (e.base_latency_ms().unwrap() - expected).abs() < 1e-9,
            "above 0.5 × 16 sent: not calm"
        );
        // Sent little, but 10 of 16 in flight: a queue, not calm.
        e.observe(
            TickLoad {
                concurrency: 10.0,
                ..tick(100.0, 0.1)
            },
            16,
        );
        assert!(
            (e.base_latency_ms().unwrap() - expected).abs() < 1e-9,
            "above 0.6 × 16 in flight: not calm"
        );
        // Sent little and few in flight, but the controller held the cluster at its
        // target: not calm (the primary of a surge, inside the queue of a wrong
        // max_in_flight).
        e.observe(
            TickLoad {
                held_at_target: true,
                ..tick(40.0, 0.1)
            },
            16,
        );
        assert!(
            (e.base_latency_ms().unwrap() - expected).abs() < 1e-9,
            "held at its target: not calm"
        );
        // Slow requests of a calm tick count like quick ones: a rule on the concurrency
        // alone (at most half of 8) would have dropped this one, 4.5 in flight, and learned
        // from the quick ticks only.
        let mut g = CapacityEstimate::default();
        g.observe(tick(20.0, 0.1), 8);
        g.observe(tick(45.0, 0.1), 8);
        let expected = (0.95 * 200.0 + 450.0) / (0.95 * 10.0 + 10.0);
        assert!((g.base_latency_ms().unwrap() - expected).abs() < 1e-9);
        // A quiet tick's few requests weigh by their number.
        let mut f = CapacityEstimate::default();
        f.observe(tick(20.0, 0.1), 16);
        f.observe(
            TickLoad {
                completed: 1,
                latency_sum_ms: 200.0,
                concurrency: 2.0,
                throughput_per_ms: 1.0 / 100.0,
                arrivals_per_ms: 1.0 / 100.0,
                elapsed_ms: 100.0,
                held_at_target: false,
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
                arrivals_per_ms: 10.0 / 100.0,
                elapsed_ms: 100.0,
                held_at_target: false,
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
    fn a_cluster_saturated_by_its_own_account_below_max_in_flight_is_reported() {
        let mut o = OrcaCapacity::default();
        // 4 in flight at utilization 0.5: it serves 8 at once; max_in_flight says 16.
        let found: Vec<KneeFinding> = (0..30)
            .filter_map(|_| o.observe(4.0, Some(0.5), 16))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "reported once, at the 20th report: {found:?}"
        );
        assert_close(found[0].knee, 8.0, "");
        assert_eq!(found[0].evidence, KneeEvidence::Orca { utilization: 0.5 });
        assert_close(o.parallelism().unwrap_or(0.0), 8.0, "");
        // A right max_in_flight is not reported, nor one a little above.
        for m in [8, 10] {
            let mut o = OrcaCapacity::default();
            assert!(
                (0..30).all(|_| o.observe(4.0, Some(0.5), m).is_none()),
                "{m}"
            );
        }
    }

    #[test]
    fn orca_reports_that_say_little_are_not_extrapolated() {
        let mut o = OrcaCapacity::default();
        for _ in 0..100 {
            // An I/O-bound cluster's CPU barely moves; no report; nonsense.
            assert!(o.observe(6.0, Some(0.05), 16).is_none());
            assert!(o.observe(6.0, None, 16).is_none());
            assert!(o.observe(f64::NAN, Some(0.5), 16).is_none());
            assert!(o.observe(6.0, Some(f64::INFINITY), 16).is_none());
        }
        assert_eq!(o.parallelism(), None);
        // And a parallelism that grows past the margin clears the report.
        let mut o = OrcaCapacity::default();
        assert_eq!(
            (0..20)
                .filter_map(|_| o.observe(4.0, Some(1.0), 16))
                .count(),
            1
        );
        // (While it climbs, every tenth it moves is news.)
        let climbing: Vec<f64> = (0..200)
            .filter_map(|_| o.observe(16.0, Some(1.0), 16))
            .map(|f| f.knee)
            .collect();
        assert!(
            climbing.windows(2).all(|w| w[1] > 1.1 * w[0]),
            "{climbing:?}"
        );
        assert!(o.parallelism().unwrap_or(0.0) > 12.0);
        let falling: Vec<f64> = (0..200)
            .filter_map(|_| o.observe(4.0, Some(1.0), 16))
            .map(|f| f.knee)
            .collect();
        assert!(
            falling.first().is_some_and(|k| *k < 12.0 && *k > 10.0),
            "reported again as soon as it falls below the margin: {falling:?}"
        );
    }
}
