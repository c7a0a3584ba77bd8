use super::*;

use BodyState::{Buffered, Empty, NotHeld};

fn retries(on: &[RetryOn]) -> Retries {
    Retries {
        attempts: 3,
        per_try_timeout: None,
        retry_on: on.to_vec(),
        budget_percent: 0.0,
    }
}

fn resp(status: u16) -> Outcome {
    Outcome::Response {
        status,
        grpc_status: None,
    }
}

fn at(made: u32, outcome: Outcome, method: &str, body: BodyState) -> Attempt<'_> {
    Attempt {
        made,
        outcome,
        method,
        body,
    }
}

fn grpc(code: u32) -> Outcome {
    Outcome::Response {
        status: 200,
        grpc_status: Some(code),
    }
}

#[test]
fn conditions_meet_exactly_their_outcomes() {
    use RetryOn::*;
    let cases: &[(RetryOn, Outcome, bool)] = &[
        (FiveXx, resp(500), true),
        (FiveXx, resp(503), true),
        (FiveXx, resp(599), true),
        (FiveXx, resp(499), false),
        (FiveXx, resp(200), false),
        (FiveXx, Outcome::Reset, true),
        (FiveXx, Outcome::ConnectFailure, true),
        (FiveXx, Outcome::Timeout, true),
        (GatewayError, resp(500), false),
        (GatewayError, resp(502), true),
        (GatewayError, resp(503), true),
        (GatewayError, resp(504), true),
        (GatewayError, resp(505), false),
        (GatewayError, Outcome::Reset, false),
        (GatewayError, Outcome::ConnectFailure, true),
        (GatewayError, Outcome::Timeout, true),
        (Reset, Outcome::Reset, true),
        (Reset, resp(502), false),
        (Reset, Outcome::ConnectFailure, false),
        (ConnectFailure, Outcome::ConnectFailure, true),
        (ConnectFailure, Outcome::Reset, false),
        (ConnectFailure, resp(503), false),
        (Retriable4xx, resp(409), true),
        (Retriable4xx, resp(400), false),
        (Retriable4xx, resp(429), false),
        (Unavailable, grpc(14), true),
        (Unavailable, grpc(0), false),
        (Unavailable, resp(503), false),
        (Cancelled, grpc(1), true),
        (DeadlineExceeded, grpc(4), true),
        (ResourceExhausted, grpc(8), true),
        (ResourceExhausted, grpc(14), false),
    ];
    for (on, outcome, want) in cases {
        assert_eq!(
            condition(*outcome, &[*on]).is_some(),
            *want,
            "{on:?} x {outcome:?}"
        );
    }
    assert_eq!(
        condition(resp(503), &[Reset, GatewayError, FiveXx]),
        Some(GatewayError),
        "the first configured condition that applies is reported"
    );
}

#[test]
fn eligibility_table_method_by_condition_by_body() {
    use RetryOn::*;
    let r = retries(&[FiveXx, ConnectFailure, Unavailable]);
    let t = RetryTuning::default();
    let big = t.max_buffered_body + 1;
    let ok = |on| Ok(on);
    #[rustfmt::skip]
    let table: &[(&str, Outcome, BodyState, Result<RetryOn, Final>)] = &[
        // Idempotent: every configured condition, if the body can be sent again.
        ("GET", resp(503), Empty, ok(FiveXx)),
        ("GET", Outcome::Reset, Empty, ok(FiveXx)),
        ("GET", Outcome::Timeout, Empty, ok(FiveXx)),
        ("PUT", Outcome::Reset, Buffered(10), ok(FiveXx)),
        ("PUT", resp(503), Buffered(big), Err(Final::BodyTooLarge)),
        ("PUT", resp(503), NotHeld, Err(Final::BodyNotHeld)),
        ("DELETE", Outcome::ConnectFailure, Empty, ok(FiveXx)),
        // Not idempotent: explicit statuses and connect failures only.
        ("POST", resp(503), Buffered(100), ok(FiveXx)),
        ("POST", grpc(14), Buffered(100), ok(Unavailable)),
        ("POST", Outcome::ConnectFailure, Buffered(100), ok(FiveXx)),
        ("POST", Outcome::Reset, Buffered(100), Err(Final::NotIdempotent)),
        ("POST", Outcome::Timeout, Empty, Err(Final::NotIdempotent)),
        ("PATCH", resp(500), NotHeld, Err(Final::BodyNotHeld)),
        ("POST", grpc(14), Buffered(t.max_buffered_body), ok(Unavailable)),
        ("POST", grpc(14), Buffered(big), Err(Final::BodyTooLarge)),
        // Never a tunnel; never a success or an unlisted failure.
        ("CONNECT", Outcome::ConnectFailure, Empty, Err(Final::Tunnel)),
        ("GET", resp(200), Empty, Err(Final::NotRetriable)),
        ("GET", resp(409), Empty, Err(Final::NotRetriable)),
        ("POST", grpc(4), Buffered(1), Err(Final::NotRetriable)),
    ];
    for (method, outcome, body, want) in table {
        assert_eq!(
            eligible(&r, &t, &at(1, *outcome, method, *body)),
            *want,
            "{method} {outcome:?} {body:?}"
        );
    }
}

#[test]
fn attempts_count_the_first_one() {
    let r = retries(&[RetryOn::FiveXx]);
    let t = RetryTuning::default();
    assert!(eligible(&r, &t, &at(1, resp(500), "GET", Empty)).is_ok());
    assert!(eligible(&r, &t, &at(2, resp(500), "GET", Empty)).is_ok());
    assert_eq!(
        eligible(&r, &t, &at(3, resp(500), "GET", Empty)),
        Err(Final::AttemptsExhausted)
    );
    let once = Retries {
        attempts: 1,
        ..r.clone()
    };
    assert_eq!(
        eligible(&once, &t, &at(1, resp(500), "GET", Empty)),
        Err(Final::AttemptsExhausted)
    );
}

#[test]
fn backoff_doubles_within_bounds_and_caps() {
    let t = RetryTuning::default();
    let ms = Duration::from_millis;
    // Ceilings 25, 50, 100, 200, 250, 250 ms; the wait is in [ceiling/2, ceiling].
    for (retry, ceiling) in [
        (1, 25),
        (2, 50),
        (3, 100),
        (4, 200),
        (5, 250),
        (9, 250),
        (40, 250),
    ] {
        let lo = backoff(&t, retry, 0.0);
        let hi = backoff(&t, retry, 0.999_999);
        assert_eq!(lo, ms(ceiling) / 2, "retry {retry}");
        assert!(
            hi < ms(ceiling) && hi > ms(ceiling) * 99 / 100,
            "retry {retry}: {hi:?}"
        );
        assert_eq!(
            backoff(&t, retry, 0.5),
            ms(ceiling) * 3 / 4,
            "retry {retry}"
        );
    }
    // Out-of-range jitter is clamped rather than trusted.
    assert_eq!(backoff(&t, 1, 7.0), ms(25));
    assert_eq!(backoff(&t, 1, -1.0), Duration::from_micros(12_500));
}

#[test]
fn budget_allows_ratio_plus_floor_in_the_window() {
    let t = RetryTuning {
        min_retries_per_second: 1,
        ..RetryTuning::default()
    };
    let t0 = Instant::now();
    let mut b = RetryBudget::new(0.2, &t, t0);
    for _ in 0..100 {
        b.deposit(t0);
    }
    // 0.2 * 100 + 1/s * 10 s = 30 retries.
    let granted = (0..100).filter(|_| b.try_withdraw(t0)).count();
    assert_eq!(granted, 30);
    assert_eq!(b.window(t0), (100, 30));
    // 9.9 s later the same second-buckets still count; at 10 s the first has left.
    let later = t0 + Duration::from_millis(9_900);
    assert!(!b.try_withdraw(later));
    let after = t0 + Duration::from_secs(10);
    assert_eq!(b.window(after), (0, 0));
    assert_eq!(
        (0..100).filter(|_| b.try_withdraw(after)).count(),
        10,
        "floor only"
    );
}

/// Every request fails; every eligible failure asks for a retry. Without a budget that is
/// 2 extra attempts per request (+200%); the budget holds it at ratio * requests + floor.
#[test]
fn budget_caps_a_retry_storm() {
    let t = RetryTuning::default();
    let r = Retries {
        attempts: 3,
        per_try_timeout: None,
        retry_on: vec![RetryOn::FiveXx],
        budget_percent: 0.0,
    };
    let t0 = Instant::now();
    let mut budget = RetryBudget::new(r.budget_ratio(), &t, t0);
    let rate = 200; // requests per second
    let seconds = 60;
    let mut retries_per_second = vec![0u64; seconds];
    for i in 0..(rate * seconds) {
        let now = t0 + Duration::from_micros((i as u64) * 1_000_000 / rate as u64);
        budget.deposit(now);
        let mut attempts = 1;
        loop {
            let attempt = at(attempts, resp(503), "GET", Empty);
            match decide(&r, &t, &mut budget, &attempt, now, None, 0.5) {
                RetryDecision::Retry { backoff, .. } => {
                    assert!(backoff <= t.backoff_max);
                    attempts += 1;
                    retries_per_second[i / rate] += 1;
                }
                RetryDecision::Final(f) => {
                    assert!(matches!(
                        f,
                        Final::AttemptsExhausted | Final::BudgetExhausted
                    ));
                    break;
                }
            }
        }
        // The invariant holds at every instant, not just on average.
        let (q, rt) = budget.window(now);
        assert!(
            rt as f64 <= 0.2 * q as f64 + 100.0,
            "at {i}: {rt} retries for {q} requests"
        );
    }
    // Steady state (after the first window): 0.2 * 2000 + 100 = 500 retries per 10 s,
    // i.e. 50/s against 400/s without a budget.
    let steady: u64 = retries_per_second[20..60].iter().sum();
    let per_second = steady as f64 / 40.0;
    assert!((per_second - 50.0).abs() <= 2.0, "{per_second} retries/s");
    // The first second may spend the floor of the whole window at once.
    assert_eq!(retries_per_second[0], 0.2f64.mul_add(200.0, 100.0) as u64);
}

#[test]
fn budget_percent_sets_the_ratio() {
    let mut r = retries(&[]);
    assert_eq!(r.budget_ratio(), 0.2);
    r.budget_percent = 50.0;
    assert_eq!(r.budget_ratio(), 0.5);
}

#[test]
fn retry_on_spelling_matches_the_proto() {
    let compile = |yaml: &str| {
        let spec: quiver_api::v1::Retries = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        Retries::compile(&spec, "retries", &mut errors).ok_or(errors)
    };
    let r = compile(
        "attempts: 3\nperTryTimeout: 1s\nretryOn: [5xx, gateway-error, reset, connect-failure, retriable-4xx, unavailable, cancelled, deadline-exceeded, resource-exhausted]\nbudgetPercent: 10\n",
    )
    .unwrap();
    assert_eq!(r.retry_on, RetryOn::ALL);
    assert_eq!(r.per_try_timeout, Some(Duration::from_secs(1)));
    let e = compile("attempts: 2\nretryOn: [4xx]\n").unwrap_err();
    assert_eq!(e[0].path, "retries.retryOn[0]");
}

#[test]
fn decide_checks_the_deadline_before_spending_budget() {
    let r = retries(&[RetryOn::FiveXx]);
    let t = RetryTuning::default();
    let t0 = Instant::now();
    let mut b = RetryBudget::new(0.2, &t, t0);
    let a = at(2, resp(503), "GET", Empty);
    // Second retry: ceiling 50 ms, jitter 0.5 -> 37.5 ms.
    let wait = Duration::from_micros(37_500);
    assert_eq!(
        decide(&r, &t, &mut b, &a, t0, Some(t0 + wait), 0.5),
        RetryDecision::Final(Final::Deadline)
    );
    assert_eq!(b.window(t0), (0, 0), "nothing withdrawn");
    assert_eq!(
        decide(
            &r,
            &t,
            &mut b,
            &a,
            t0,
            Some(t0 + wait + Duration::from_micros(1)),
            0.5
        ),
        RetryDecision::Retry {
            condition: RetryOn::FiveXx,
            backoff: wait
        }
    );
    assert_eq!(b.window(t0), (0, 1));
    assert_eq!(
        decide(
            &r,
            &t,
            &mut b,
            &at(1, resp(200), "GET", Empty),
            t0,
            None,
            0.5
        ),
        RetryDecision::Final(Final::NotRetriable)
    );
}
