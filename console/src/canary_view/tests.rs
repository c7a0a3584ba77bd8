use super::*;

fn status(phase: &str, step: u32, weight: u32) -> pb::CanaryStatus {
    pb::CanaryStatus {
        phase: phase.into(),
        current_step: step,
        canary_weight: weight,
        ..Default::default()
    }
}

fn spec() -> pb::CanarySpec {
    pb::CanarySpec {
        service: "reviews".into(),
        stable_subset: "v1".into(),
        canary_subset: "v2".into(),
        steps: vec![10, 50, 100],
        interval: "10m".into(),
        ..Default::default()
    }
}

fn measure(requests: u64, success_rate: f64, p99_ms: f64) -> Option<pb::CanaryMeasure> {
    Some(pb::CanaryMeasure {
        requests,
        errors: 0,
        success_rate,
        p50_ms: 1.0,
        p99_ms,
    })
}

#[test]
fn the_step_bar_marks_passed_current_and_stopped_steps() {
    use StepMark::*;
    assert_eq!(
        step_marks(&status(PROGRESSING, 1, 50), 3),
        [Passed, Current, Upcoming]
    );
    assert_eq!(
        step_marks(&status(PAUSED, 0, 10), 3),
        [Current, Upcoming, Upcoming]
    );
    assert_eq!(
        step_marks(&status(PROMOTED, 1, 100), 3),
        [Passed, Passed, Passed]
    );
    assert_eq!(
        step_marks(&status(ROLLED_BACK, 2, 0), 3),
        [Passed, Passed, Stopped]
    );
    assert_eq!(
        step_marks(&status(ABORTED, 0, 0), 3),
        [Stopped, Upcoming, Upcoming]
    );
    assert_eq!(step_marks(&status("", 0, 0), 2), [Upcoming, Upcoming]);
}

#[test]
fn the_mirror_stage_comes_before_the_first_step() {
    use StepMark::*;
    let mirroring = |phase: &str| pb::CanaryStatus {
        mirroring: true,
        ..status(phase, 0, 0)
    };
    assert_eq!(mirror_mark(&mirroring(PROGRESSING)), Current);
    assert_eq!(step_marks(&mirroring(PROGRESSING), 2), [Upcoming, Upcoming]);
    assert_eq!(mirror_mark(&mirroring(ROLLED_BACK)), Stopped);
    assert_eq!(mirror_mark(&status(PROGRESSING, 0, 10)), Passed);
    assert_eq!(mirror_mark(&status(PENDING, 0, 0)), Upcoming);
    let spec = pb::CanarySpec {
        mirror_percent: 5.0,
        ..spec()
    };
    assert_eq!(
        position(&spec, &mirroring(PAUSED)),
        "mirror stage (5% of requests copied)"
    );
    assert_eq!(position(&spec, &status(PROGRESSING, 1, 50)), "step 2 of 3");
    assert_eq!(position(&spec, &status("", 0, 0)), "");
}

#[test]
fn each_action_applies_in_the_phases_the_control_plane_accepts_it() {
    let want: [(&str, [bool; 4]); 6] = [
        // Pause, Resume, Promote, Abort
        (PENDING, [true, false, true, true]),
        (PROGRESSING, [true, false, true, true]),
        (PAUSED, [false, true, true, true]),
        (PROMOTED, [false, false, false, true]),
        (ROLLED_BACK, [false, false, true, false]),
        (ABORTED, [false, false, true, false]),
    ];
    for (phase, enabled) in want {
        let got = ACTIONS.map(|a| applies(&spec(), &status(phase, 0, 10), a));
        assert_eq!(got, enabled, "{phase}");
    }
    // A spec the API would refuse: nothing to call.
    let broken = pb::CanarySpec {
        steps: Vec::new(),
        ..spec()
    };
    assert!(!applies(
        &broken,
        &status(PROGRESSING, 0, 10),
        Action::Abort
    ));
}

#[test]
fn the_weight_after_an_event_is_read_from_its_phase_or_message() {
    let ev = |phase: &str, message: &str| pb::CanaryEvent {
        at: String::new(),
        phase: phase.into(),
        message: message.into(),
    };
    assert_eq!(
        weight_after(&ev(PROGRESSING, "started; step 1 of 3 (10%)")),
        Some(10.0)
    );
    assert_eq!(
        weight_after(&ev(PROGRESSING, "step 1 passed; step 2 of 3 (50%)")),
        Some(50.0)
    );
    // A user's reason may hold numbers; pause and resume do not move the weight.
    assert_eq!(
        weight_after(&ev(PAUSED, "paused at 10%: 99% is fine (5%)x")),
        None
    );
    assert_eq!(
        weight_after(&ev(PROGRESSING, "resumed at 10%: by (5%)")),
        None
    );
    assert_eq!(weight_after(&ev(PROMOTED, "promoted by hand")), Some(100.0));
    assert_eq!(weight_after(&ev(ABORTED, "aborted at 50%")), Some(0.0));
    assert_eq!(weight_after(&ev(PROGRESSING, "no number")), None);
}

#[test]
fn the_history_holds_the_weight_to_now_and_skips_checks_without_requests() {
    let mut s = status(PROGRESSING, 1, 50);
    s.events = vec![pb::CanaryEvent {
        at: "1000".into(),
        phase: PROGRESSING.into(),
        message: "step 1 of 2 (10%)".into(),
    }];
    s.checks = vec![
        pb::CanaryCheck {
            at_unix_ms: 2000,
            step: 0,
            weight: 10,
            result: "Passed".into(),
            canary: measure(30, 100.0, 12.0),
            stable: measure(0, 0.0, 0.0),
            ..Default::default()
        },
        pb::CanaryCheck {
            at_unix_ms: 3000,
            step: 1,
            weight: 50,
            result: "Inconclusive".into(),
            canary: measure(0, 0.0, 0.0),
            stable: measure(40, 97.5, 20.0),
            ..Default::default()
        },
    ];
    let h = history(&s, 5000.0, |t| t.parse().unwrap_or(f64::NAN));
    assert_eq!(
        h.weight,
        [
            (1000.0, 10.0),
            (2000.0, 10.0),
            (3000.0, 50.0),
            (5000.0, 50.0)
        ]
    );
    assert_eq!(h.canary_success, [(2000.0, 100.0)]);
    assert_eq!(h.stable_success, [(3000.0, 97.5)]);
    assert_eq!(h.canary_p99, [(2000.0, 12.0)]);
    // A finished canary's line ends at its last event.
    s.phase = ABORTED.into();
    let h = history(&s, 5000.0, |t| t.parse().unwrap_or(f64::NAN));
    assert_eq!(h.weight.last(), Some(&(3000.0, 50.0)));
}

#[test]
fn a_weight_line_holds_each_value_until_the_next_point() {
    let pts = polyline(
        &vec![(0.0, 0.0), (10.0, 100.0)],
        (0.0, 10.0),
        (0.0, 100.0),
        true,
    );
    let ys: Vec<&str> = pts
        .split(' ')
        .map(|p| p.split(',').nth(1).unwrap_or(""))
        .collect();
    // Start at the bottom, stay there until t=10, then jump to the top.
    assert_eq!(ys, ["92.0", "92.0", "8.0"]);
    assert_eq!(
        polyline(
            &vec![(0.0, 0.0), (10.0, 100.0)],
            (0.0, 10.0),
            (0.0, 100.0),
            false
        )
        .split(' ')
        .count(),
        2
    );
}

#[test]
fn only_progressing_and_paused_canaries_count_as_running() {
    assert!(is_running(Some(&status(PROGRESSING, 0, 10))));
    assert!(is_running(Some(&status(PAUSED, 0, 10))));
    assert!(!is_running(Some(&status(PROMOTED, 2, 100))));
    assert!(!is_running(Some(&status(PENDING, 0, 0))));
    assert!(!is_running(None));
}
