//! Property tests of the predictor's parsers of outside input: CSV series and timestamps.
//! Neither may panic or allocate without bound; what parses is what was written.

use proptest::prelude::*;
use shadowmesh_predictor::data::{MAX_GRID_POINTS, parse_csv, parse_timestamp};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}", step in proptest::option::of(any::<i64>())) {
        let _ = parse_timestamp(&text);
        if let Ok(g) = parse_csv(&text, step) {
            prop_assert!(g.values.len() <= MAX_GRID_POINTS);
        }
    }

    /// Rows of arbitrary numbers and timestamps (as CSV cells): bounded, never a panic.
    #[test]
    fn arbitrary_rows_are_bounded(rows in proptest::collection::vec((any::<i64>(), any::<f64>()), 0..20)) {
        let mut text = String::from("ts,value\n");
        for (t, v) in &rows {
            text.push_str(&format!("{t},{v}\n"));
        }
        if let Ok(g) = parse_csv(&text, None) {
            prop_assert!(g.values.len() <= MAX_GRID_POINTS);
            prop_assert!(g.values.iter().flatten().all(|v| v.is_finite()));
        }
    }

    /// A regular series written in any supported timestamp form is read back exactly (from
    /// 2001 on: unix seconds and milliseconds are told apart by magnitude).
    #[test]
    fn written_series_read_back(
        t0 in 1_000_000_000i64..4_000_000_000, step in prop::sample::select(vec![60i64, 1_800, 3_600, 86_400]),
        values in proptest::collection::vec(proptest::option::of(0f64..1e12), 2..50),
        form in 0..4usize,
    ) {
        let t0 = t0 - t0 % step; // dates (form 3) need whole days only for daily steps
        prop_assume!(form != 3 || step == 86_400);
        let mut text = String::from("ts,value\n");
        for (i, v) in values.iter().enumerate() {
            let t = t0 + i as i64 * step;
            let dt = chrono::DateTime::from_timestamp(t, 0).unwrap();
            let ts = match form {
                0 => t.to_string(),
                1 => (t * 1_000).to_string(),
                2 => dt.to_rfc3339(),
                _ => dt.format("%Y-%m-%d").to_string(),
            };
            let v = v.map(|v| v.to_string()).unwrap_or_default();
            text.push_str(&format!("{ts},{v}\n"));
        }
        let g = parse_csv(&text, Some(step)).unwrap();
        prop_assert_eq!(g.t0, t0);
        prop_assert_eq!(g.step_secs, step);
        prop_assert_eq!(g.values, values);
    }
}

#[test]
fn negative_values_and_two_rows_on_one_step_are_refused_by_row() {
    let err = parse_csv("ts,v\n0,1\n60,-2\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("row 3"), "{err:#}");
    assert!(format!("{err:#}").contains("negative"), "{err:#}");
    // Half-hourly rows on an hourly grid: the second of each hour would replace the first.
    let err = parse_csv("ts,v\n0,1\n1800,2\n3600,3\n", Some(3600)).unwrap_err();
    assert!(format!("{err:#}").contains("row 3"), "{err:#}");
}

#[test]
fn timestamps_in_every_documented_form() {
    let t = 1_285_070_400; // 2010-09-21 12:00:00 UTC
    for s in [
        "1285070400",
        "1285070400000",
        "2010-09-21T12:00:00Z",
        "2010-09-21T14:00:00+02:00",
        "2010-09-21 12:00:00",
        "2010-09-21T12:00:00.000",
        "2010-09-21 12:00",
    ] {
        assert_eq!(parse_timestamp(s).unwrap(), t, "{s}");
    }
    assert_eq!(parse_timestamp("2010-09-21").unwrap(), t - 12 * 3600);
    assert!(parse_timestamp("21/09/2010").is_err());
}

#[test]
fn a_far_timestamp_is_an_error_not_an_allocation() {
    let e = parse_csv("ts,v\n0,1\n60,2\n9999999999,3\n", None).unwrap_err();
    assert!(format!("{e:#}").contains("at most"), "{e:#}");
    let e = parse_csv("ts,v\n0,1\n60,NaN\n", None).unwrap_err();
    assert!(format!("{e:#}").contains("row 3, column 2"), "{e:#}");
}

#[test]
fn calendar_lines_become_the_events_they_say() {
    use shadowmesh_predictor::data::parse_events;
    let events = parse_events(
        "2014-01-27\n2014-12-24T18:00:00Z,6h,sale\n2014-12-25T00:00:00Z,90,blip\n2014-12-26,2d,x\n2014-12-28,30m,y\n",
    )
    .unwrap();
    let got: Vec<(i64, &str)> = events
        .iter()
        .map(|e| (e.duration_secs, e.kind.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (86_400, "holiday"),
            (21_600, "sale"),
            (90, "blip"),
            (172_800, "x"),
            (1_800, "y")
        ]
    );
    assert_eq!(events[0].start, parse_timestamp("2014-01-27").unwrap());
    let max = shadowmesh_predictor::events::MAX_EVENTS;
    let full = "2014-01-27\n".repeat(max);
    assert_eq!(
        parse_events(&full).unwrap().len(),
        max,
        "a full calendar is fine"
    );
    let err = parse_events(&format!("{full}2014-01-28\n")).unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!("line {}", max + 1)),
        "{err:#}"
    );
}
