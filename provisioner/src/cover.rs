//! The cheapest cover: the set of spares whose capacities add up to at least what is
//! needed, at the lowest total cost — not the first N, not the biggest.
//!
//! An exact 0/1 min-cost cover by dynamic programming over capacity units: `best[c]` is the
//! cheapest way to reach at least `c` units. Capacities are rounded *down* to units and the
//! need *up*, so a cover found in units covers in req/s too. Pools are tens to hundreds of
//! spares and needs thousands of units at most, so this is exact and cheap (`O(n · units)`,
//! units capped at [`MAX_UNITS`] by coarsening). Ties go to fewer spares, then to less
//! capacity (less over-provisioning), then to the spares listed first.

/// Upper bound on capacity units in the table; larger needs use coarser units.
pub const MAX_UNITS: usize = 20_000;

/// One spare that could take part in a cover.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Spare id.
    pub id: String,
    /// Capacity it adds (req/s).
    pub capacity: f64,
    /// What using it for this surge costs.
    pub cost: f64,
}

/// A chosen set of spares.
#[derive(Debug, Clone, PartialEq)]
pub struct Cover {
    /// Ids of the chosen spares, in candidate order.
    pub ids: Vec<String>,
    /// Their capacity together.
    pub capacity: f64,
    /// Their cost together.
    pub cost: f64,
}

/// The cheapest subset of `candidates` covering `need` (req/s), or `None` when even all of
/// them together fall short. A need of zero or less is covered by nothing.
pub fn cheapest_cover(candidates: &[Candidate], need: f64) -> Option<Cover> {
    if need <= 0.0 {
        return Some(Cover {
            ids: Vec::new(),
            capacity: 0.0,
            cost: 0.0,
        });
    }
    let total: f64 = candidates.iter().map(|c| c.capacity).sum();
    if total < need {
        return None;
    }
    // One unit is 1 req/s, coarser when the need would take more than MAX_UNITS units.
    let unit = (need / MAX_UNITS as f64).max(1.0);
    let units = |cap: f64| (cap / unit).floor() as usize;
    let target = (need / unit).ceil() as usize;
    if candidates.iter().map(|c| units(c.capacity)).sum::<usize>() < target {
        // Rounding down lost the last fraction: fall back to taking everything, cheapest
        // first, until covered (only reachable with sub-unit capacities).
        return greedy(candidates, need);
    }
    // best[c] = (cost, spares, capacity) of the cheapest way to reach >= c units.
    type Cell = Option<(f64, usize, f64)>;
    let mut best: Vec<Cell> = vec![None; target + 1];
    best[0] = Some((0.0, 0, 0.0));
    // took[i][c]: candidate i improved cell c (for reconstruction).
    let mut took = vec![vec![false; target + 1]; candidates.len()];
    for (i, cand) in candidates.iter().enumerate() {
        let u = units(cand.capacity);
        // Descending so each candidate is used at most once.
        for c in (0..=target).rev() {
            let from = c.saturating_sub(u);
            if let Some((cost, n, cap)) = best[from] {
                let next = (cost + cand.cost, n + 1, cap + cand.capacity);
                if better(next, best[c]) {
                    best[c] = Some(next);
                    took[i][c] = true;
                }
            }
        }
    }
    best[target]?;
    let mut ids = Vec::new();
    let mut c = target;
    for i in (0..candidates.len()).rev() {
        if c == 0 {
            break;
        }
        if took[i][c] {
            ids.push(candidates[i].id.clone());
            c = c.saturating_sub(units(candidates[i].capacity));
        }
    }
    ids.reverse();
    let chosen: Vec<&Candidate> = candidates.iter().filter(|c| ids.contains(&c.id)).collect();
    Some(Cover {
        capacity: chosen.iter().map(|c| c.capacity).sum(),
        cost: chosen.iter().map(|c| c.cost).sum(),
        ids,
    })
}

fn better(a: (f64, usize, f64), b: Option<(f64, usize, f64)>) -> bool {
    let Some(b) = b else { return true };
    const EPS: f64 = 1e-9;
    if a.0 < b.0 - EPS {
        return true;
    }
    if a.0 > b.0 + EPS {
        return false;
    }
    (a.1, a.2) < (b.1, b.2)
}

fn greedy(candidates: &[Candidate], need: f64) -> Option<Cover> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| (a.cost / a.capacity).total_cmp(&(b.cost / b.capacity)));
    let mut cover = Cover {
        ids: Vec::new(),
        capacity: 0.0,
        cost: 0.0,
    };
    for c in sorted {
        if cover.capacity >= need {
            break;
        }
        cover.ids.push(c.id.clone());
        cover.capacity += c.capacity;
        cover.cost += c.cost;
    }
    (cover.capacity >= need).then_some(cover)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, capacity: f64, cost: f64) -> Candidate {
        Candidate {
            id: id.into(),
            capacity,
            cost,
        }
    }

    #[test]
    fn the_cheapest_combination_wins_not_the_first_or_the_biggest() {
        // Need 250: first-N would take a+b (cost 11); the biggest alone (d, 300) costs 9;
        // b+c (150+100) cover exactly for 7.
        let pool = [
            c("a", 150.0, 6.0),
            c("b", 150.0, 5.0),
            c("c", 100.0, 2.0),
            c("d", 300.0, 9.0),
        ];
        let cover = cheapest_cover(&pool, 250.0).unwrap();
        assert_eq!(cover.ids, ["b", "c"]);
        assert_eq!((cover.capacity, cover.cost), (250.0, 7.0));
    }

    #[test]
    fn ties_go_to_fewer_spares_then_less_capacity() {
        let pool = [c("x", 100.0, 4.0), c("y", 100.0, 4.0), c("z", 200.0, 8.0)];
        assert_eq!(cheapest_cover(&pool, 150.0).unwrap().ids, ["z"]);
        let pool = [c("big", 400.0, 4.0), c("fit", 200.0, 4.0)];
        assert_eq!(cheapest_cover(&pool, 150.0).unwrap().ids, ["fit"]);
    }

    #[test]
    fn short_pools_and_zero_needs() {
        let pool = [c("a", 100.0, 1.0), c("b", 100.0, 1.0)];
        assert_eq!(cheapest_cover(&pool, 201.0), None);
        assert!(cheapest_cover(&pool, 0.0).unwrap().ids.is_empty());
        assert_eq!(cheapest_cover(&pool, 200.0).unwrap().ids, ["a", "b"]);
        assert_eq!(cheapest_cover(&[], 1.0), None);
    }

    /// The cheapest cost of any subset covering `need`, by trying them all.
    fn brute_force(pool: &[Candidate], need: f64) -> Option<f64> {
        let mut best: Option<f64> = None;
        for mask in 0u32..(1 << pool.len()) {
            let (cap, cost) = pool
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .fold((0.0, 0.0), |(a, b), (_, s)| (a + s.capacity, b + s.cost));
            if cap >= need && best.is_none_or(|b| cost < b) {
                best = Some(cost);
            }
        }
        best
    }

    #[test]
    fn a_tie_on_cost_goes_to_fewer_spares_wherever_they_are_listed() {
        // The single spare first, then last: either way one spare beats two of equal cost.
        let pool = [c("z", 200.0, 8.0), c("x", 100.0, 4.0), c("y", 100.0, 4.0)];
        assert_eq!(cheapest_cover(&pool, 150.0).unwrap().ids, ["z"]);
        let pool = [c("x", 100.0, 4.0), c("y", 100.0, 4.0), c("z", 200.0, 8.0)];
        assert_eq!(cheapest_cover(&pool, 150.0).unwrap().ids, ["z"]);
        // Costs in a small currency unit: at 8e7 the 1e-9 tolerance is below one ulp, and
        // an exact tie must still be a tie.
        let pool = [c("z", 200.0, 8e7), c("x", 100.0, 4e7), c("y", 100.0, 4e7)];
        assert_eq!(cheapest_cover(&pool, 150.0).unwrap().ids, ["z"]);
        let pool = [c("x", 100.0, 4e7), c("y", 100.0, 4e7), c("z", 200.0, 8e7)];
        assert_eq!(cheapest_cover(&pool, 150.0).unwrap().ids, ["z"]);
    }

    #[test]
    fn a_full_tie_goes_to_the_spare_listed_first() {
        let pool = [c("p", 100.0, 1.0), c("q", 100.0, 1.0)];
        assert_eq!(cheapest_cover(&pool, 50.0).unwrap().ids, ["p"]);
        let pool = [c("q", 100.0, 1.0), c("p", 100.0, 1.0)];
        assert_eq!(cheapest_cover(&pool, 50.0).unwrap().ids, ["q"]);
    }

    #[test]
    fn an_exact_fit_in_units_is_found_and_listed_in_candidate_order() {
        // 100.7 and 100.2 round down to 100 units each: exactly the 200 needed.
        let pool = [c("x", 100.7, 5.0), c("y", 100.2, 1.0)];
        let cover = cheapest_cover(&pool, 200.0).unwrap();
        assert_eq!(cover.ids, ["x", "y"], "candidate order, not cost order");
        assert_eq!(cover.cost, 6.0);
        assert!((cover.capacity - 200.9).abs() < 1e-9);
    }

    #[test]
    fn sub_unit_spares_are_covered_cheapest_per_capacity_first() {
        // Every capacity rounds down to 0 units: the exact table cannot see them, so the
        // cover takes spares by cost per req/s until covered: b (0.5/req/s), then a (1.0).
        let pool = [c("a", 0.9, 0.9), c("b", 0.3, 0.15), c("c", 0.5, 1.0)];
        let cover = cheapest_cover(&pool, 1.0).unwrap();
        assert_eq!(cover.ids, ["b", "a"]);
        assert!((cover.capacity - 1.2).abs() < 1e-9);
        assert!((cover.cost - 1.05).abs() < 1e-9);
        assert_eq!(cheapest_cover(&pool, 1.7).unwrap().ids, ["b", "a", "c"]);
        // Order by cost per req/s, whichever comes first in the list: x (0.1) before y (5).
        let pool = [c("y", 0.1, 0.5), c("x", 0.9, 0.09)];
        assert_eq!(cheapest_cover(&pool, 0.9).unwrap().ids, ["x"]);
    }

    #[test]
    fn coarse_units_stay_exact_when_capacities_are_whole_units() {
        // A need of 50,000 req/s is 20,000 units of 2.5 req/s (25,000: 1.25); capacities
        // that are whole units lose nothing to rounding, so the table's answer is the true
        // cheapest.
        let pool: Vec<Candidate> = (0..12)
            .map(|i| {
                c(
                    &format!("u{i}"),
                    2.5 * (2_000 + ((i * 1_237) % 3_001)) as f64,
                    1.0 + ((i * 7) % 5) as f64 + 0.1 * i as f64,
                )
            })
            .collect();
        for need in [25_000.0, 50_000.0] {
            let cover = cheapest_cover(&pool, need).unwrap();
            assert!(cover.capacity >= need, "need {need}: {cover:?}");
            let cost: f64 = pool
                .iter()
                .filter(|s| cover.ids.contains(&s.id))
                .map(|s| s.cost)
                .sum();
            assert!((cover.cost - cost).abs() < 1e-9);
            let best = brute_force(&pool, need).unwrap();
            assert!(
                (cover.cost - best).abs() < 1e-9,
                "need {need}: {} vs {best}",
                cover.cost
            );
        }
    }

    #[test]
    fn large_needs_use_coarse_units_and_still_cover() {
        let pool: Vec<Candidate> = (0..40)
            .map(|i| {
                c(
                    &format!("s{i}"),
                    5_000.0 + 37.0 * i as f64,
                    1.0 + i as f64 * 0.1,
                )
            })
            .collect();
        let cover = cheapest_cover(&pool, 123_456.0).unwrap();
        assert!(cover.capacity >= 123_456.0);
        // Exhaustive check on a smaller instance: the DP matches brute force.
        let small: Vec<Candidate> = (0..12)
            .map(|i| {
                c(
                    &format!("t{i}"),
                    10.0 + ((i * 7) % 11) as f64 * 9.0,
                    1.0 + ((i * 5) % 7) as f64,
                )
            })
            .collect();
        for need in [15.0, 64.0, 150.0, 333.0] {
            let dp = cheapest_cover(&small, need).map(|c| c.cost);
            assert_eq!(dp, brute_force(&small, need), "need {need}");
        }
    }
}
