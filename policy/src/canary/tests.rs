use super::*;

fn settings() -> Settings {
    Settings::from_spec(&v1::CanarySpec {
        service: "reviews".into(),
        stable_subset: "v1".into(),
        canary_subset: "v2".into(),
        steps: vec![10, 50, 100],
        interval: "10s".into(),
        success_criteria: Some(v1::SuccessCriteria {
            min_success_rate: 99.0,
            max_p99_latency: "500ms".into(),
            max_p50_latency: String::new(),
        }),
        threshold: 2,
        min_requests: 0,
        webhooks: Vec::new(),
        mirror_percent: 0.0,
    })
    .unwrap()
}

/// `n` requests, `errors` of them failed, all in the bucket whose upper bound is `ms`.
fn measured(n: u64, errors: u64, ms: f64) -> v1::CanaryMeasure {
    let mut t = Totals::default();
    let mut b = [0u64; LATENCY_BUCKETS];
    b[crate::latency::bucket_of(ms)] = n;
    t.add(n, errors, &b);
    t.measure()
}

const T0: i64 = 1_765_000_000_000;

#[test]
fn defaults_fill_in_what_the_spec_leaves_out() {
    let s = Settings::from_spec(&v1::CanarySpec {
        steps: vec![50],
        interval: "1m".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.min_requests, DEFAULT_MIN_REQUESTS);
    assert_eq!(s.min_success_rate, DEFAULT_MIN_SUCCESS_RATE);
    assert_eq!((s.threshold, s.max_p99_ms), (1, None));
    assert!(Settings::from_spec(&v1::CanarySpec::default()).is_none());
}

#[test]
fn judging_uses_success_rate_latency_and_enough_requests() {
    let s = settings();
    assert_eq!(judge(&s, &measured(100, 0, 20.0)), Verdict::Passed);
    assert!(matches!(
        judge(&s, &measured(19, 0, 20.0)),
        Verdict::Inconclusive(r) if r.contains("19 requests") && r.contains("minRequests 20")
    ));
    let Verdict::Failed(r) = judge(&s, &measured(1000, 88, 20.0)) else {
        panic!()
    };
    assert_eq!(r, "success rate 91.2% < 99%");
    let Verdict::Failed(r) = judge(&s, &measured(100, 0, 1000.0)) else {
        panic!()
    };
    assert!(r.starts_with("p99 ") && r.ends_with("> 500ms"), "{r}");
    // Exactly at the limit passes.
    assert_eq!(judge(&s, &measured(100, 1, 20.0)), Verdict::Passed);
}

fn run(s: &Settings, checks: &[v1::CanaryMeasure]) -> v1::CanaryStatus {
    let mut st = start(
        s,
        &v1::CanaryStatus::default(),
        "h1",
        "analysis started",
        T0,
    );
    let mut now = T0;
    for m in checks {
        now += 10_000;
        assert_eq!(
            due(s, &st, "h1", now),
            Due::Check {
                since_ms: st.step_started_unix_ms
            }
        );
        st = after_check(s, &st, *m, measured(100, 0, 10.0), &Gates::default(), now);
    }
    st
}

#[test]
fn a_healthy_canary_walks_every_step_to_promotion() {
    let s = settings();
    let st = start(
        &s,
        &v1::CanaryStatus::default(),
        "h1",
        "analysis started",
        T0,
    );
    assert_eq!((st.phase.as_str(), st.canary_weight), (PROGRESSING, 10));
    // Not due before the interval.
    assert_eq!(due(&s, &st, "h1", T0 + 9_999), Due::Nothing);
    let healthy = measured(200, 0, 20.0);
    let st = run(&s, &[healthy, healthy]);
    assert_eq!((st.current_step, st.canary_weight), (2, 100));
    assert_eq!(st.phase, PROGRESSING, "the last step is judged too");
    let st = run(&s, &[healthy, healthy, healthy]);
    assert_eq!((st.phase.as_str(), st.canary_weight), (PROMOTED, 100));
    let weights: Vec<(&str, &str)> = st
        .events
        .iter()
        .map(|e| (e.phase.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(weights.len(), 4, "{weights:?}");
    assert_eq!(st.checks.len(), 3);
    assert!(st.checks.iter().all(|c| c.result == "Passed"));
    assert_eq!(due(&s, &st, "h1", T0 + 1_000_000), Due::Nothing);
}

#[test]
fn failed_checks_up_to_the_threshold_roll_back_with_the_reason() {
    let s = settings();
    let bad = measured(1000, 88, 20.0);
    let st = run(&s, &[measured(200, 0, 20.0), bad]);
    assert_eq!((st.phase.as_str(), st.failed_checks), (PROGRESSING, 1));
    assert_eq!(st.canary_weight, 50, "one failure holds the step");
    let st = run(&s, &[measured(200, 0, 20.0), bad, bad]);
    assert_eq!((st.phase.as_str(), st.canary_weight), (ROLLED_BACK, 0));
    assert_eq!(
        st.message,
        "success rate 91.2% < 99% at step 2 (50%), 2 checks in a row: all traffic back to the \
         stable subset"
    );
    // A passing check in between resets the count.
    let st = run(
        &s,
        &[
            measured(1000, 88, 20.0),
            measured(200, 0, 20.0),
            measured(1000, 88, 20.0),
        ],
    );
    assert_eq!((st.phase.as_str(), st.failed_checks), (PROGRESSING, 1));
}

#[test]
fn no_traffic_is_inconclusive_and_never_promotes() {
    let s = settings();
    let quiet = measured(3, 0, 20.0);
    let st = run(&s, &[quiet, quiet, quiet, quiet]);
    assert_eq!((st.phase.as_str(), st.current_step), (PROGRESSING, 0));
    assert!(st.message.contains("waiting for traffic"), "{}", st.message);
    assert!(st.checks.iter().all(|c| c.result == "Inconclusive"));
    // The window is kept: requests accumulate from the step's start.
    let since = st.step_started_unix_ms;
    assert_eq!(since, T0);
    let st = after_check(
        &s,
        &st,
        measured(40, 0, 20.0),
        measured(40, 0, 20.0),
        &Gates::default(),
        T0 + 50_000,
    );
    assert_eq!(st.current_step, 1, "traffic resumed: the step passes");
}

#[test]
fn a_change_restarts_the_analysis_and_manual_actions_apply_by_phase() {
    let s = settings();
    let st = run(&s, &[measured(200, 0, 20.0)]);
    assert_eq!(st.current_step, 1);
    let Due::Start(reason) = due(&s, &st, "h2", T0 + 20_000) else {
        panic!()
    };
    let st = start(&s, &st, "h2", &reason, T0 + 20_000);
    assert_eq!((st.current_step, st.canary_weight), (0, 10));
    assert!(st.events.last().unwrap().message.contains("restarted"));

    let paused = act(&s, &st, Action::Pause, "by ops", T0).unwrap();
    assert_eq!((paused.phase.as_str(), paused.canary_weight), (PAUSED, 10));
    assert_eq!(due(&s, &paused, "h2", T0 + 1_000_000), Due::Nothing);
    assert!(act(&s, &paused, Action::Pause, "", T0).is_err());
    let resumed = act(&s, &paused, Action::Resume, "", T0 + 5_000).unwrap();
    assert_eq!(resumed.phase, PROGRESSING);
    assert_eq!(resumed.step_started_unix_ms, T0 + 5_000);
    let promoted = act(&s, &resumed, Action::Promote, "", T0).unwrap();
    assert_eq!(
        (promoted.phase.as_str(), promoted.canary_weight),
        (PROMOTED, 100)
    );
    let aborted = act(&s, &promoted, Action::Abort, "bad release", T0).unwrap();
    assert_eq!(
        (aborted.phase.as_str(), aborted.canary_weight),
        (ABORTED, 0)
    );
    assert!(aborted.message.ends_with(": bad release"));
    assert!(
        act(&s, &aborted, Action::Resume, "", T0)
            .unwrap_err()
            .contains("Aborted")
    );
    assert_eq!(weight_in_effect(Some(&aborted)), Some(0));
    assert_eq!(weight_in_effect(Some(&v1::CanaryStatus::default())), None);
}

#[test]
fn history_is_bounded() {
    let s = settings();
    let quiet = measured(1, 0, 20.0);
    let st = run(&s, &vec![quiet; 25]);
    assert_eq!(st.checks.len(), MAX_CHECKS);
}

#[test]
fn times_are_rfc3339_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(rfc3339(1_765_064_399_999), "2025-12-06T23:39:59.999Z");
}

#[test]
fn webhooks_gate_the_start_every_check_and_the_promotion() {
    let s = settings();
    // pre-rollout refuses: Pending, asked again an interval later, rolled back at the threshold.
    let st = pre_rollout_failed(
        &s,
        &v1::CanaryStatus::default(),
        "h1",
        "webhook load-test: HTTP 500",
        T0,
    );
    assert_eq!((st.phase.as_str(), st.failed_checks), (PENDING, 1));
    assert_eq!(due(&s, &st, "h1", T0 + 5_000), Due::Nothing);
    assert!(matches!(due(&s, &st, "h1", T0 + 10_000), Due::Start(_)));
    let st = pre_rollout_failed(&s, &st, "h1", "webhook load-test: HTTP 500", T0 + 10_000);
    assert_eq!((st.phase.as_str(), st.canary_weight), (ROLLED_BACK, 0));
    assert!(st.message.contains("not started"), "{}", st.message);

    // A failing rollout hook fails a check whose numbers are fine.
    let st = start(
        &s,
        &v1::CanaryStatus::default(),
        "h1",
        "analysis started",
        T0,
    );
    let gates = Gates {
        rollout: Some("webhook smoke: HTTP 503".into()),
        confirm_promotion: None,
    };
    let st = after_check(
        &s,
        &st,
        measured(200, 0, 20.0),
        measured(200, 0, 20.0),
        &gates,
        T0 + 10_000,
    );
    assert_eq!(st.failed_checks, 1);
    assert_eq!(st.checks.last().unwrap().reason, "webhook smoke: HTTP 503");

    // confirm-promotion holds the last step without failing it.
    let mut st = start(
        &s,
        &v1::CanaryStatus::default(),
        "h1",
        "analysis started",
        T0,
    );
    st.current_step = 2;
    st.canary_weight = 100;
    assert!(would_promote(&s, &st, &measured(200, 0, 20.0)));
    assert!(!would_promote(&s, &st, &measured(200, 50, 20.0)));
    let hold = Gates {
        rollout: None,
        confirm_promotion: Some("webhook approve: HTTP 403".into()),
    };
    let held = after_check(
        &s,
        &st,
        measured(200, 0, 20.0),
        measured(200, 0, 20.0),
        &hold,
        T0 + 10_000,
    );
    assert_eq!((held.phase.as_str(), held.failed_checks), (PROGRESSING, 0));
    assert!(
        held.message
            .contains("promotion waits: webhook approve: HTTP 403")
    );
    let done = after_check(
        &s,
        &held,
        measured(200, 0, 20.0),
        measured(200, 0, 20.0),
        &Gates::default(),
        T0 + 20_000,
    );
    assert_eq!(done.phase, PROMOTED);
}

#[test]
fn the_mirror_stage_comes_first_and_serves_no_user() {
    let mut s = settings();
    s.mirror_percent = 50.0;
    let st = start(
        &s,
        &v1::CanaryStatus::default(),
        "h1",
        "analysis started",
        T0,
    );
    assert!(st.mirroring);
    assert_eq!((st.phase.as_str(), st.canary_weight), (PROGRESSING, 0));
    let spec = v1::CanarySpec {
        mirror_percent: 50.0,
        ..Default::default()
    };
    assert_eq!(mirror_in_effect(&spec, Some(&st)), Some(50.0));
    assert!(!would_promote(&s, &st, &measured(100, 0, 20.0)));
    // Passing the mirror stage starts the first step.
    let next = after_check(
        &s,
        &st,
        measured(100, 0, 20.0),
        measured(100, 0, 20.0),
        &Gates::default(),
        T0 + 10_000,
    );
    assert!(!next.mirroring);
    assert_eq!((next.current_step, next.canary_weight), (0, 10));
    assert_eq!(mirror_in_effect(&spec, Some(&next)), None);
    assert_eq!(next.message, "mirror stage passed; step 1 of 3 (10%)");
    // Failing it rolls back without a user ever reaching the canary.
    let bad = measured(100, 30, 20.0);
    let once = after_check(
        &s,
        &st,
        bad,
        measured(100, 0, 20.0),
        &Gates::default(),
        T0 + 10_000,
    );
    let twice = after_check(
        &s,
        &once,
        bad,
        measured(100, 0, 20.0),
        &Gates::default(),
        T0 + 20_000,
    );
    assert_eq!(
        (twice.phase.as_str(), twice.canary_weight),
        (ROLLED_BACK, 0)
    );
    assert!(
        twice.message.contains("in the mirror stage"),
        "{}",
        twice.message
    );
    assert!(!twice.mirroring);
}
