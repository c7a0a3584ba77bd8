use super::*;

fn cfg() -> OutlierConfig {
    OutlierConfig::default()
}

fn fail_n(s: &mut OutlierState, n: u32, now: Instant, room: bool) -> Recorded {
    let mut last = Recorded::Counted;
    for _ in 0..n {
        last = s.record(&cfg(), false, now, room);
    }
    last
}

#[test]
fn five_consecutive_failures_eject_and_a_success_resets() {
    let t0 = Instant::now();
    let mut s = OutlierState::default();
    assert_eq!(fail_n(&mut s, 4, t0, true), Recorded::Counted);
    assert_eq!(s.record(&cfg(), true, t0, true), Recorded::Counted);
    assert_eq!(fail_n(&mut s, 4, t0, true), Recorded::Counted);
    assert!(!s.is_ejected(t0));
    assert_eq!(
        s.record(&cfg(), false, t0, true),
        Recorded::Ejected {
            duration: Duration::from_secs(30),
            times: 1
        }
    );
    assert!(s.is_ejected(t0));
    assert!(s.is_ejected(t0 + Duration::from_millis(29_999)));
    assert!(
        !s.is_ejected(t0 + Duration::from_secs(30)),
        "returns after the time"
    );
}

#[test]
fn ejection_time_doubles_and_caps() {
    let c = cfg();
    let secs: Vec<u64> = (1..=6).map(|n| c.ejection_time(n).as_secs()).collect();
    assert_eq!(secs, [30, 60, 120, 240, 300, 300]);

    let mut s = OutlierState::default();
    let mut now = Instant::now();
    let mut got = Vec::new();
    for _ in 0..6 {
        match fail_n(&mut s, 5, now, true) {
            Recorded::Ejected { duration, times } => got.push((times, duration.as_secs())),
            other => panic!("{other:?}"),
        }
        // Failures while ejected (requests already in flight) change nothing.
        assert_eq!(fail_n(&mut s, 10, now, true), Recorded::Counted);
        now += Duration::from_secs(got.last().map(|g| g.1).unwrap_or(0));
        assert!(!s.is_ejected(now));
    }
    assert_eq!(
        got,
        [(1, 30), (2, 60), (3, 120), (4, 240), (5, 300), (6, 300)]
    );
}

#[test]
fn back_in_rotation_counts_afresh_and_a_long_healthy_spell_resets_the_multiplier() {
    let t0 = Instant::now();
    let mut s = OutlierState::default();
    fail_n(&mut s, 5, t0, true);
    let back = t0 + Duration::from_secs(30);
    // One failure after return is not the fifth.
    assert_eq!(s.record(&cfg(), false, back, true), Recorded::Counted);
    assert_eq!(fail_n(&mut s, 3, back, true), Recorded::Counted);
    assert_eq!(
        s.record(&cfg(), false, back, true),
        Recorded::Ejected {
            duration: Duration::from_secs(60),
            times: 2
        }
    );
    // In for 300 s after that ejection ended: the next ejection is the first again.
    let healthy = back + Duration::from_secs(60 + 300);
    assert_eq!(s.record(&cfg(), true, healthy, true), Recorded::Counted);
    assert_eq!(s.times_ejected(), 0);
    assert_eq!(
        fail_n(&mut s, 5, healthy, true),
        Recorded::Ejected {
            duration: Duration::from_secs(30),
            times: 1
        }
    );
}

#[test]
fn max_share_is_never_exceeded() {
    let c = cfg();
    assert!(c.room_to_eject(0, 2));
    assert!(!c.room_to_eject(1, 2));
    assert!(!c.room_to_eject(0, 1), "never the only endpoint");
    assert!(c.room_to_eject(4, 10));
    assert!(!c.room_to_eject(5, 10));
    assert!(c.room_to_eject(0, 3));
    assert!(!c.room_to_eject(1, 3), "2 of 3 is past half");

    let t0 = Instant::now();
    let mut s = OutlierState::default();
    assert_eq!(fail_n(&mut s, 5, t0, false), Recorded::EjectionRefused);
    assert!(!s.is_ejected(t0));
    // Once there is room, the next failure ejects.
    assert!(matches!(
        s.record(&cfg(), false, t0, true),
        Recorded::Ejected { times: 1, .. }
    ));
}
