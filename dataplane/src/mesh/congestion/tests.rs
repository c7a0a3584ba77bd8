use super::*;

const MTU: u16 = 1200;
const PKT: u64 = MTU as u64;

fn filter(tolerance: f64) -> LossFilter {
    let mut f = LossFilter::new(tolerance, MTU);
    f.round = Duration::from_millis(50);
    f
}

/// Send `per_round` packets spread over one 50 ms round starting at `t`.
fn send_round(f: &mut LossFilter, t: Instant, per_round: u64) {
    for i in 0..per_round {
        f.on_sent(t + Duration::from_micros(50_000 * i / per_round), PKT);
    }
}

#[test]
fn zero_tolerance_takes_every_loss_as_congestion() {
    let mut f = filter(0.0);
    let t = Instant::now();
    send_round(&mut f, t, 100);
    assert!(f.is_congestion(t + Duration::from_millis(49), PKT, false));
}

#[test]
fn sparse_random_loss_below_the_tolerance_is_not_congestion() {
    // 2% loss (every 50th packet) at 100 packets a round, for 40 rounds, tolerance 5%.
    let mut f = filter(0.05);
    let t0 = Instant::now();
    let mut sent = 0u64;
    for round in 0..40u64 {
        let t = t0 + Duration::from_millis(50 * round);
        for i in 0..100u64 {
            let at = t + Duration::from_micros(500 * i);
            f.on_sent(at, PKT);
            sent += 1;
            if sent.is_multiple_of(50) {
                assert!(
                    !f.is_congestion(at, PKT, false),
                    "a 2% loss was taken as congestion in round {round}"
                );
            }
        }
    }
}

#[test]
fn a_burst_of_loss_is_congestion() {
    let mut f = filter(0.05);
    let t = Instant::now();
    send_round(&mut f, t, 100);
    let later = t + Duration::from_millis(60);
    send_round(&mut f, later, 100);
    // A queue overflowed: 30 packets of the last two rounds lost in one go.
    assert!(f.is_congestion(later + Duration::from_millis(10), 30 * PKT, false));
}

#[test]
fn one_or_two_lost_packets_are_never_enough() {
    // Two of ten packets is 20%, far above the tolerance, but only two packets.
    let mut f = filter(0.05);
    let t = Instant::now();
    send_round(&mut f, t, 10);
    assert!(!f.is_congestion(t + Duration::from_millis(40), 2 * PKT, false));
    // A third loss in the same window crosses the count.
    assert!(f.is_congestion(t + Duration::from_millis(45), PKT, false));
}

#[test]
fn a_small_window_sample_needs_a_significant_excess() {
    // 40 packets over two rounds at 2% loss: three losses happen by chance (about 5% of such
    // samples). Taking them as congestion would shrink the window, shrink the next sample and
    // spiral down; they are not, while seven (17%) are.
    let mut f = filter(0.05);
    let t = Instant::now();
    send_round(&mut f, t, 20);
    send_round(&mut f, t + Duration::from_millis(50), 20);
    let at = t + Duration::from_millis(95);
    assert!(!f.is_congestion(at, 3 * PKT, false));
    assert!(!f.is_congestion(at, 3 * PKT, false), "six of forty");
    assert!(f.is_congestion(at, PKT, false), "seven of forty");
}

#[test]
fn a_loss_while_a_queue_builds_is_congestion() {
    let mut f = filter(0.05);
    let t = Instant::now();
    send_round(&mut f, t, 100);
    // 5 ms over a 50 ms minimum: noise, not a queue.
    f.on_rtt(Duration::from_millis(55), Duration::from_millis(50));
    assert!(!f.is_congestion(t + Duration::from_millis(40), PKT, false));
    // 20 ms over it: a buffer is filling, and a loss now is the buffer overflowing.
    f.on_rtt(Duration::from_millis(70), Duration::from_millis(50));
    assert!(f.is_congestion(t + Duration::from_millis(45), PKT, false));
    // On a sub-millisecond path the floor (10 ms) applies, not a quarter of the minimum.
    let mut lan = filter(0.05);
    send_round(&mut lan, t, 100);
    lan.on_rtt(Duration::from_millis(3), Duration::from_micros(200));
    assert!(!lan.is_congestion(t + Duration::from_millis(1), PKT, false));
}

#[test]
fn persistent_congestion_and_ecn_always_count() {
    let mut f = filter(0.5);
    let t = Instant::now();
    send_round(&mut f, t, 100);
    assert!(f.is_congestion(t, PKT, true), "persistent congestion");
    assert!(
        f.is_congestion(t, 0, false),
        "an ECN mark reports 0 lost bytes"
    );
}

#[test]
fn losses_age_out_after_two_rounds() {
    let mut f = filter(0.05);
    let t = Instant::now();
    send_round(&mut f, t, 20);
    assert!(!f.is_congestion(t + Duration::from_millis(40), 2 * PKT, false));
    // Three rounds later the earlier two losses are no longer in the sample.
    let later = t + Duration::from_millis(200);
    send_round(&mut f, later, 20);
    assert!(!f.is_congestion(later + Duration::from_millis(40), PKT, false));
}

fn controller(tolerance: f64, algorithm: Algorithm) -> Box<dyn Controller> {
    MeshControllerFactory::new(ControlSettings {
        algorithm,
        initial_window: 100 * PKT,
        loss_tolerance: tolerance,
    })
    .build(Instant::now(), MTU)
}

#[test]
fn the_window_survives_random_loss_only_with_a_tolerance() {
    for algorithm in [Algorithm::Cubic, Algorithm::Newreno] {
        let mut strict = controller(0.0, algorithm);
        let mut tolerant = controller(0.05, algorithm);
        // After the controllers exist: NewReno ignores losses of packets sent before it.
        let t = Instant::now() + Duration::from_millis(1);
        for c in [&mut strict, &mut tolerant] {
            for i in 0..100 {
                c.on_sent(t + Duration::from_micros(100 * i), PKT, i);
            }
            c.on_congestion_event(
                t + Duration::from_millis(30),
                t + Duration::from_millis(5),
                false,
                PKT,
            );
        }
        assert_eq!(
            tolerant.window(),
            100 * PKT,
            "{algorithm:?}: one random loss"
        );
        assert!(
            strict.window() < 100 * PKT,
            "{algorithm:?}: quinn's own response shrinks the window"
        );
        let counts = tolerant
            .into_any()
            .downcast::<MeshController>()
            .map(|c| c.counts())
            .unwrap_or_default();
        assert_eq!(counts.tolerated_events, 1);
        assert_eq!(counts.tolerated_bytes, PKT);
        assert_eq!(counts.congestion_events, 0);
    }
}

#[test]
fn the_factory_builds_the_named_algorithm_with_its_initial_window() {
    for algorithm in [Algorithm::Cubic, Algorithm::Newreno, Algorithm::Bbr] {
        let c = controller(0.05, algorithm);
        assert_eq!(c.initial_window(), 100 * PKT);
        let c = c.into_any().downcast::<MeshController>().ok();
        assert_eq!(c.map(|c| c.algorithm()), Some(algorithm));
    }
}
