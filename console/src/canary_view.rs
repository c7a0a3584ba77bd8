//! A canary's progress as the controller reports it in `status`: the phase, the step bar,
//! the weight and the reason, charts of the weight and of the canary's and the stable
//! subset's success rate and p99 over time, the check history and the event list, plus the
//! manual controls (pause, resume, promote, abort) that call the API's canary actions.
//! Everything here is drawn from the Canary the page's Watch stream delivers, so it moves
//! as the controller writes. Whether an action applies in a phase is the control plane's
//! own rule (`quiver_policy::canary::act`), never one of the console's.

use leptos::prelude::*;
use leptos::task::spawn_local;

use quiver_policy::canary::{
    ABORTED, Action, PAUSED, PENDING, PROGRESSING, PROMOTED, ROLLED_BACK, Settings, act,
};

use crate::api::{ApiError, client};
use crate::pb;
use crate::ui::{Ctx, human_ms, parse_time};

/// Where a step of `spec.steps` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepMark {
    Passed,
    Current,
    /// The step the canary was rolled back or aborted at.
    Stopped,
    Upcoming,
}

impl StepMark {
    fn class(self) -> &'static str {
        match self {
            StepMark::Passed => "passed",
            StepMark::Current => "current",
            StepMark::Stopped => "stopped",
            StepMark::Upcoming => "upcoming",
        }
    }
}

/// Each of `steps` steps marked by the canary's status.
pub fn step_marks(status: &pb::CanaryStatus, steps: usize) -> Vec<StepMark> {
    let current = status.current_step as usize;
    (0..steps)
        .map(|i| match status.phase.as_str() {
            PROMOTED => StepMark::Passed,
            "" | PENDING => StepMark::Upcoming,
            // Still in the mirror stage (dark launch) before the first step.
            _ if status.mirroring => StepMark::Upcoming,
            _ if i < current => StepMark::Passed,
            ROLLED_BACK | ABORTED if i == current => StepMark::Stopped,
            _ if i == current => StepMark::Current,
            _ => StepMark::Upcoming,
        })
        .collect()
}

/// The mirror stage (a spec with `mirrorPercent`), drawn before the first step.
pub fn mirror_mark(status: &pb::CanaryStatus) -> StepMark {
    match (status.phase.as_str(), status.mirroring) {
        ("" | PENDING, _) => StepMark::Upcoming,
        (PROGRESSING | PAUSED, true) => StepMark::Current,
        (ROLLED_BACK | ABORTED, true) => StepMark::Stopped,
        _ => StepMark::Passed,
    }
}

/// Where the canary is, in words: "step 2 of 3", "mirror stage (5% copied)".
pub fn position(spec: &pb::CanarySpec, status: &pb::CanaryStatus) -> String {
    let n = spec.steps.len();
    if status.phase.is_empty() || n == 0 {
        String::new()
    } else if status.mirroring {
        format!("mirror stage ({}% of requests copied)", spec.mirror_percent)
    } else {
        format!("step {} of {n}", (status.current_step as usize + 1).min(n))
    }
}

/// The canary is driving its service's split now (what the Topology page marks).
pub fn is_running(status: Option<&pb::CanaryStatus>) -> bool {
    status.is_some_and(|s| s.phase == PROGRESSING || s.phase == PAUSED)
}

/// The manual actions, in the order the buttons are shown.
pub const ACTIONS: [Action; 4] = [
    Action::Pause,
    Action::Resume,
    Action::Promote,
    Action::Abort,
];

fn label(a: Action) -> &'static str {
    match a {
        Action::Pause => "Pause",
        Action::Resume => "Resume",
        Action::Promote => "Promote",
        Action::Abort => "Abort",
    }
}

/// The control plane would accept `action` on a canary with `spec` and `status`: the same
/// function the API runs, so a button is enabled exactly where the call can succeed.
pub fn applies(spec: &pb::CanarySpec, status: &pb::CanaryStatus, action: Action) -> bool {
    Settings::from_spec(spec).is_some_and(|s| act(&s, status, action, "", 0).is_ok())
}

/// The canary weight right after an event: promotion sends everything to the canary, a
/// rollback or an abort nothing; a start or a passed step ends its message with the new
/// weight ("step 2 of 3 (50%)"). Pause and resume keep the weight: `None`, the line goes on.
pub fn weight_after(event: &pb::CanaryEvent) -> Option<f64> {
    match event.phase.as_str() {
        PROMOTED => Some(100.0),
        ROLLED_BACK | ABORTED => Some(0.0),
        PAUSED => None,
        _ if event.message.starts_with("resumed at ") => None,
        _ => {
            let (_, w) = event.message.strip_suffix("%)")?.rsplit_once('(')?;
            w.parse().ok()
        }
    }
}

/// Points over time (milliseconds since the epoch, value), oldest first.
pub type Series = Vec<(f64, f64)>;

/// What the charts draw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub weight: Series,
    pub canary_success: Series,
    pub stable_success: Series,
    pub canary_p99: Series,
    pub stable_p99: Series,
}

/// The chart data of `status` at `now`: the weight from the events and checks (and its
/// current value, held until now), the measures from the checks. A check whose subset served
/// no request has no success rate or latency: it is left out of that line. `parse` reads the
/// events' RFC 3339 times (the browser's `Date.parse` on the page).
pub fn history(status: &pb::CanaryStatus, now: f64, parse: impl Fn(&str) -> f64) -> History {
    let mut h = History::default();
    for e in &status.events {
        let at = parse(&e.at);
        if let (false, Some(w)) = (at.is_nan(), weight_after(e)) {
            h.weight.push((at, w));
        }
    }
    for c in &status.checks {
        let at = c.at_unix_ms as f64;
        h.weight.push((at, f64::from(c.weight)));
        let measured =
            |m: &Option<pb::CanaryMeasure>| m.as_ref().filter(|m| m.requests > 0).cloned();
        if let Some(m) = measured(&c.canary) {
            h.canary_success.push((at, m.success_rate));
            h.canary_p99.push((at, m.p99_ms));
        }
        if let Some(m) = measured(&c.stable) {
            h.stable_success.push((at, m.success_rate));
            h.stable_p99.push((at, m.p99_ms));
        }
    }
    h.weight.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !h.weight.is_empty() && weight_moves(status) {
        h.weight.push((now, f64::from(status.canary_weight)));
    }
    h
}

/// The weight is still being decided (the line runs on to now).
fn weight_moves(status: &pb::CanaryStatus) -> bool {
    matches!(status.phase.as_str(), PROGRESSING | PAUSED)
}

/// A chart's box in SVG units.
const CHART_W: f64 = 360.0;
const CHART_H: f64 = 110.0;
const PAD_L: f64 = 40.0;
const PAD_B: f64 = 18.0;
const PAD_T: f64 = 8.0;

/// SVG polyline points for `series` in a chart spanning `t` (time) and `y` (values).
/// `steps`: hold each value until the next point (a weight), else straight segments.
pub fn polyline(series: &Series, t: (f64, f64), y: (f64, f64), steps: bool) -> String {
    let sx = |v: f64| {
        let span = (t.1 - t.0).max(1.0);
        PAD_L + (v - t.0) / span * (CHART_W - PAD_L - 4.0)
    };
    let sy = |v: f64| {
        let span = (y.1 - y.0).max(f64::EPSILON);
        PAD_T + (1.0 - (v - y.0) / span) * (CHART_H - PAD_T - PAD_B)
    };
    let mut out: Vec<String> = Vec::new();
    let mut last_y = None;
    for &(at, v) in series {
        if let (true, Some(ly)) = (steps, last_y) {
            out.push(format!("{:.1},{:.1}", sx(at), ly));
        }
        let py = sy(v);
        out.push(format!("{:.1},{py:.1}", sx(at)));
        last_y = Some(py);
    }
    out.join(" ")
}

/// The value range a chart shows: `lo..hi` widened to hold every value.
fn range<'a>(all: impl Iterator<Item = &'a Series>, lo: f64, hi: f64) -> (f64, f64) {
    all.flat_map(|s| s.iter().map(|p| p.1))
        .fold((lo, hi), |(a, b), v| (a.min(v), b.max(v)))
}

/// One small line chart: `lines` are (css class, legend, series, step-line).
fn chart(
    title: &'static str,
    id: &'static str,
    t: (f64, f64),
    y: (f64, f64),
    unit: &'static str,
    lines: Vec<(&'static str, &'static str, Series, bool)>,
) -> impl IntoView + use<> {
    let fmt = move |v: f64| {
        if v >= 100.0 || v == v.round() {
            format!("{v:.0}{unit}")
        } else {
            format!("{v:.1}{unit}")
        }
    };
    let empty = lines.iter().all(|l| l.2.is_empty());
    let base = CHART_H - PAD_B;
    let span = human_ms(t.1 - t.0);
    view! {
        <figure class="chart" data-chart=id>
            <figcaption>
                {title}
                {lines.iter().map(|(class, legend, _, _)| view! { <span class=format!("legend {class}")>{*legend}</span> }).collect_view()}
            </figcaption>
            <svg viewBox=format!("0 0 {CHART_W} {CHART_H}") role="img" aria-label=title>
                <line class="axis" x1=PAD_L.to_string() y1=base.to_string() x2=(CHART_W - 4.0).to_string() y2=base.to_string() />
                <line class="axis" x1=PAD_L.to_string() y1=PAD_T.to_string() x2=PAD_L.to_string() y2=base.to_string() />
                <text class="tick" x=(PAD_L - 4.0).to_string() y=(PAD_T + 8.0).to_string() text-anchor="end">{fmt(y.1)}</text>
                <text class="tick" x=(PAD_L - 4.0).to_string() y=base.to_string() text-anchor="end">{fmt(y.0)}</text>
                <text class="tick" x=(CHART_W - 4.0).to_string() y=(CHART_H - 4.0).to_string() text-anchor="end">"now"</text>
                <text class="tick" x=PAD_L.to_string() y=(CHART_H - 4.0).to_string()>{format!("{span} ago")}</text>
                {empty.then(|| view! { <text class="tick" x=(CHART_W / 2.0).to_string() y=(CHART_H / 2.0).to_string() text-anchor="middle">"no measured checks yet"</text> })}
                {lines.into_iter().map(|(class, _, series, steps)| view! {
                    <polyline class=format!("line {class}") points=polyline(&series, t, y, steps) />
                }).collect_view()}
            </svg>
        </figure>
    }
}

/// The three charts for `status` at `now`.
fn charts(status: &pb::CanaryStatus, now: f64) -> impl IntoView + use<> {
    let h = history(status, now, parse_time);
    let firsts = [&h.weight, &h.canary_success, &h.stable_success]
        .into_iter()
        .filter_map(|s| s.first().map(|p| p.0));
    let start = firsts.fold(now, f64::min);
    // At least a minute across, so a fresh canary's first point is not on the right edge.
    let t = (start.min(now - 60_000.0), now);
    let success = range(
        [&h.canary_success, &h.stable_success].into_iter(),
        95.0,
        100.0,
    );
    let p99 = range([&h.canary_p99, &h.stable_p99].into_iter(), 0.0, 10.0);
    view! {
        <div class="charts">
            {chart("Canary weight", "weight", t, (0.0, 100.0), "%", vec![("weight", "canary %", h.weight, true)])}
            {chart("Success rate", "success", t, success, "%", vec![
                ("canary", "canary", h.canary_success, false),
                ("stable", "stable", h.stable_success, false),
            ])}
            {chart("p99 latency", "p99", t, (p99.0, p99.1), " ms", vec![
                ("canary", "canary", h.canary_p99, false),
                ("stable", "stable", h.stable_p99, false),
            ])}
        </div>
    }
}

/// The step bar: each step of `spec` with its weight (after the mirror stage, if any), the
/// current one highlighted.
#[component]
pub fn StepBar(spec: pb::CanarySpec, status: pb::CanaryStatus) -> impl IntoView {
    let steps = spec.steps;
    let marks = step_marks(&status, steps.len());
    let mirror = (spec.mirror_percent > 0.0).then(|| {
        let m = mirror_mark(&status);
        view! {
            <li class=format!("mirror {}", m.class()) data-step="mirror" aria-current=(m == StepMark::Current).then_some("step")>
                {format!("mirror {}%", spec.mirror_percent)}
            </li>
        }
    });
    view! {
        <ol class="step-bar" aria-label="Steps">
            {mirror}
            {steps.iter().zip(marks).enumerate().map(|(i, (w, m))| view! {
                <li class=m.class() data-step=i.to_string() aria-current=(m == StepMark::Current).then_some("step")>
                    {format!("{w}%")}
                </li>
            }).collect_view()}
        </ol>
    }
}

/// "Progressing" as a coloured badge.
#[component]
pub fn PhaseBadge(phase: String) -> impl IntoView {
    let shown = if phase.is_empty() {
        "Not started".to_string()
    } else {
        phase.clone()
    };
    view! { <span class=format!("badge phase phase-{}", phase.to_lowercase()) data-phase=phase>{shown}</span> }
}

fn measure(m: &Option<pb::CanaryMeasure>) -> String {
    match m {
        Some(m) if m.requests > 0 => format!(
            "{} req · {:.2}% ok · p50 {:.0} ms · p99 {:.0} ms",
            m.requests, m.success_rate, m.p50_ms, m.p99_ms
        ),
        _ => "no requests".into(),
    }
}

/// The whole progress card of the canary `ns/name`, from `canary` (the live copy).
#[component]
pub fn CanaryProgress(
    #[prop(into)] canary: Signal<Option<pb::Canary>>,
    ns: String,
    name: String,
) -> impl IntoView {
    let ctx = Ctx::get();
    let reason = RwSignal::new(String::new());
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<ApiError>);
    let notice = RwSignal::new(None::<String>);
    let spec = move || canary.with(|c| c.as_ref().and_then(|c| c.spec.clone()).unwrap_or_default());
    let status = move || {
        canary.with(|c| {
            c.as_ref()
                .and_then(|c| c.status.clone())
                .unwrap_or_default()
        })
    };
    let run = move |action: Action| {
        let req = pb::CanaryActionRequest {
            namespace: ns.clone(),
            name: name.clone(),
            reason: reason.get_untracked().trim().to_string(),
        };
        let token = ctx.token();
        busy.set(true);
        error.set(None);
        notice.set(None);
        spawn_local(async move {
            let mut c = client(&token);
            let answer = match action {
                Action::Pause => c.pause_canary(req).await,
                Action::Resume => c.resume_canary(req).await,
                Action::Promote => c.promote_canary(req).await,
                Action::Abort => c.abort_canary(req).await,
            };
            busy.set(false);
            match answer {
                Ok(c) => {
                    let s = c.into_inner().status.unwrap_or_default();
                    reason.set(String::new());
                    notice.set(Some(format!("{}: {}", s.phase, s.message)));
                }
                Err(s) => error.set(Some(ApiError::from_status(&s))),
            }
        });
    };
    view! {
        <div class="card canary-state" aria-live="polite">
            <h2>"Progress"</h2>
            <p class="phase-line">
                {move || view! { <PhaseBadge phase=status().phase /> }}
                " "
                <span class="weight-now" data-weight=move || status().canary_weight.to_string()>
                    {move || { let s = status(); if s.phase.is_empty() { "not started".to_string() } else { format!("{}% to the canary", s.canary_weight) } }}
                </span>
                {move || { let p = position(&spec(), &status()); (!p.is_empty()).then(|| format!(" · {p}")) }}
            </p>
            {move || view! { <StepBar spec=spec() status=status() /> }}
            <p class="canary-message">{move || { let s = status(); if s.message.is_empty() { "The controller has not taken this canary yet.".to_string() } else { s.message } }}</p>
            <p class="muted small">
                {move || { let s = status(); (s.failed_checks > 0).then(|| format!("{} failed check(s) in a row at this step. ", s.failed_checks)) }}
                {move || { let s = status(); (s.step_started_unix_ms > 0 && (s.phase == PROGRESSING || s.phase == PAUSED)).then(|| format!("Step began {} ago. ", human_ms(ctx.now.get() - s.step_started_unix_ms as f64))) }}
                {move || { let s = status(); (!s.driver.is_empty()).then(|| format!("Driven by {}.", s.driver)) }}
            </p>
            <fieldset class="canary-actions" disabled=move || !ctx.can_write() || busy.get()>
                <legend>"Manual control"</legend>
                <div class="weight-inputs">
                    <label for="canary-action-reason">"Reason (optional)"</label>
                    <input id="canary-action-reason" type="text" placeholder="kept in the event list"
                        prop:value=move || reason.get() on:input=move |e| reason.set(event_target_value(&e)) />
                    {ACTIONS.into_iter().map(|a| {
                        let run = run.clone();
                        view! {
                            <button type="button" class=if a == Action::Abort { "danger" } else { "" } data-action=a.verb()
                                disabled=move || !applies(&spec(), &status(), a)
                                on:click=move |_| run(a)>{label(a)}</button>
                        }
                    }).collect_view()}
                </div>
                {move || notice.get().map(|n| view! { <p class="notice" role="status">{n}</p> })}
                {move || error.get().map(|e| view! { <p class="banner error" role="alert">{e.summary()}</p> })}
            </fieldset>
            {move || charts(&status(), ctx.now.get())}
            <h3>"Checks " <small>"(the last 10, newest first)"</small></h3>
            {move || {
                let s = status();
                if s.checks.is_empty() {
                    return view! { <p class="empty">"No check yet: the first comes one interval after a step begins."</p> }.into_any();
                }
                view! {
                    <table class="list checks">
                        <thead><tr><th>"Time"</th><th>"Step"</th><th>"Weight"</th><th>"Result"</th><th>"Reason"</th><th>"Canary"</th><th>"Stable"</th></tr></thead>
                        <tbody>
                            {s.checks.iter().rev().map(|c| view! {
                                <tr data-result=c.result.clone()>
                                    <td>{c.at.clone()}</td>
                                    <td>{c.step + 1}</td>
                                    <td>{format!("{}%", c.weight)}</td>
                                    <td class=format!("result {}", c.result.to_lowercase())>{c.result.clone()}</td>
                                    <td>{c.reason.clone()}</td>
                                    <td>{measure(&c.canary)}</td>
                                    <td>{measure(&c.stable)}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            }}
            <h3>"Events " <small>"(newest first)"</small></h3>
            {move || {
                let s = status();
                if s.events.is_empty() {
                    return view! { <p class="empty">"Nothing has happened yet."</p> }.into_any();
                }
                view! {
                    <ol class="events">
                        {s.events.iter().rev().map(|e| view! {
                            <li data-phase=e.phase.clone()><time>{e.at.clone()}</time>" "<PhaseBadge phase=e.phase.clone() />" "{e.message.clone()}</li>
                        }).collect_view()}
                    </ol>
                }.into_any()
            }}
        </div>
    }
}

#[cfg(test)]
mod tests;
