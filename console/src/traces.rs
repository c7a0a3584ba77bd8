//! Traces: the search form over the control plane's trace store (`SearchTraces`), the result
//! list with duration bars, and opening a trace by id. The search and its results live in a
//! [`TraceSearch`] provided by the app, so coming back from a trace shows the same list. The
//! waterfall of one trace is in [`crate::waterfall`]. Like every page it decides nothing about
//! validity beyond what it can tell the user sooner: the API checks the request again.

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsValue;

use crate::api::{ApiError, Live, client, live};
use crate::pb;
use crate::ui::{Ctx, Link, LiveState, human_ms, navigate};

/// The look-back choices of the time-range select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    Last15m,
    Last1h,
    Last6h,
    Custom,
}

impl Range {
    const ALL: [Range; 4] = [Range::Last15m, Range::Last1h, Range::Last6h, Range::Custom];

    fn value(self) -> &'static str {
        match self {
            Range::Last15m => "15m",
            Range::Last1h => "1h",
            Range::Last6h => "6h",
            Range::Custom => "custom",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Range::Last15m => "Last 15 minutes",
            Range::Last1h => "Last hour",
            Range::Last6h => "Last 6 hours",
            Range::Custom => "Custom…",
        }
    }

    fn minutes(self) -> Option<f64> {
        match self {
            Range::Last15m => Some(15.0),
            Range::Last1h => Some(60.0),
            Range::Last6h => Some(360.0),
            Range::Custom => None,
        }
    }

    fn from_value(v: &str) -> Range {
        Range::ALL
            .into_iter()
            .find(|r| r.value() == v)
            .unwrap_or(Range::Last15m)
    }
}

/// The most results one search may ask for (the API's maximum).
const MAX_LIMIT: u32 = 200;

/// What the form holds, as typed.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchInput {
    /// "" for any service, else "namespace/service".
    pub service: String,
    pub errors_only: bool,
    pub min_duration: String,
    pub range: Range,
    /// `<input type="datetime-local">` values, local time.
    pub start: String,
    pub end: String,
    pub limit: String,
}

impl Default for SearchInput {
    fn default() -> Self {
        Self {
            service: String::new(),
            errors_only: false,
            min_duration: String::new(),
            range: Range::Last15m,
            start: String::new(),
            end: String::new(),
            limit: "20".into(),
        }
    }
}

/// A problem with one input of the form: (the input's field key, the message).
pub type FieldProblem = (&'static str, String);

/// The search form and its last answer; provided once by the app so it outlives the page.
#[derive(Clone, Copy)]
pub struct TraceSearch {
    pub input: RwSignal<SearchInput>,
    pub problems: RwSignal<Vec<FieldProblem>>,
    /// The last search's answer; None before the first search.
    pub results: RwSignal<Option<Vec<pb::TraceSummary>>>,
    /// A failure that belongs to no field.
    pub error: RwSignal<Option<String>>,
    pub searching: RwSignal<bool>,
    /// When the last answer arrived (ms since the epoch).
    pub answered_at: RwSignal<f64>,
}

impl TraceSearch {
    pub fn new() -> Self {
        Self {
            input: RwSignal::new(SearchInput::default()),
            problems: RwSignal::new(Vec::new()),
            results: RwSignal::new(None),
            error: RwSignal::new(None),
            searching: RwSignal::new(false),
            answered_at: RwSignal::new(f64::NAN),
        }
    }

    fn problem(&self, field: &'static str) -> Option<String> {
        self.problems.with(|p| {
            let m: Vec<&str> = p
                .iter()
                .filter(|(f, _)| *f == field)
                .map(|(_, m)| m.as_str())
                .collect();
            (!m.is_empty()).then(|| m.join("; "))
        })
    }

    /// Check the form, then ask the API.
    pub fn run(self) {
        let input = self.input.get_untracked();
        let req = match search_request(&input, js_sys::Date::now()) {
            Ok(r) => r,
            Err(p) => {
                self.problems.set(p);
                self.error.set(None);
                return;
            }
        };
        self.problems.set(Vec::new());
        self.error.set(None);
        self.searching.set(true);
        let token = Ctx::get().token();
        spawn_local(async move {
            match client(&token).search_traces(req).await {
                Ok(r) => {
                    self.results.set(Some(r.into_inner().traces));
                    self.answered_at.set(js_sys::Date::now());
                }
                Err(s) => {
                    let e = ApiError::from_status(&s);
                    let (fields, rest) = field_problems(&e);
                    self.problems.set(fields);
                    self.error.set(rest);
                }
            }
            self.searching.set(false);
        });
    }
}

impl Default for TraceSearch {
    fn default() -> Self {
        Self::new()
    }
}

/// The API names its fields `service`, `minDuration`, ...; the form's keys for them.
fn form_field(api_field: &str) -> Option<&'static str> {
    match api_field {
        "service" | "namespace" => Some("service"),
        "minDuration" => Some("min-duration"),
        "start" => Some("start"),
        "end" => Some("end"),
        "limit" => Some("limit"),
        _ => None,
    }
}

/// SearchTraces refuses a request with one line, `field: reason; field: reason`. The reasons
/// for fields the form has go next to them; anything else is returned for the banner.
fn field_problems(e: &ApiError) -> (Vec<FieldProblem>, Option<String>) {
    let mut fields = Vec::new();
    let mut rest = Vec::new();
    if e.code == tonic::Code::InvalidArgument {
        for part in e.message.split("; ") {
            match part
                .split_once(": ")
                .and_then(|(f, r)| Some((form_field(f)?, r)))
            {
                Some((f, reason)) => fields.push((f, format!("The API refused it: {reason}"))),
                None => rest.push(part.to_string()),
            }
        }
        for (path, reason) in &e.fields {
            match form_field(path) {
                Some(f) => fields.push((f, format!("The API refused it: {reason}"))),
                None => rest.push(format!("{path}: {reason}")),
            }
        }
    } else {
        rest.push(e.summary());
    }
    let rest = (!rest.is_empty()).then(|| rest.join("; "));
    (fields, rest)
}

/// A duration as the API reads it (`250ms`, `1s`, `1m30s`; units ms, s, m, h, d, no bare
/// numbers), in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<f64, String> {
    quiver_api::duration::parse(s).map(|d| d.as_secs_f64() * 1e3)
}

/// A `datetime-local` value (local time) as ms since the epoch.
fn local_time_ms(v: &str) -> Option<f64> {
    let t = js_sys::Date::new(&JsValue::from_str(v)).get_time();
    (!t.is_nan()).then_some(t)
}

fn iso(ms: f64) -> String {
    String::from(js_sys::Date::new(&JsValue::from_f64(ms)).to_iso_string())
}

/// The SearchTraces request for `input`, or every problem with it, each naming its input.
pub fn search_request(
    input: &SearchInput,
    now_ms: f64,
) -> Result<pb::SearchTracesRequest, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let (namespace, service) = match input.service.split_once('/') {
        Some((ns, svc)) => (ns.to_string(), svc.to_string()),
        None if input.service.is_empty() => (String::new(), String::new()),
        None => {
            problems.push(("service", "Choose a service from the list.".to_string()));
            (String::new(), String::new())
        }
    };
    let min_duration = input.min_duration.trim().to_string();
    if !min_duration.is_empty()
        && let Err(e) = parse_duration_ms(&min_duration)
    {
        problems.push((
            "min-duration",
            format!("Minimum duration {min_duration:?} is not a duration: {e}."),
        ));
    }
    let (start, end) = match input.range.minutes() {
        Some(m) => (iso(now_ms - m * 60_000.0), String::new()),
        None => {
            let start = match input.start.trim() {
                "" => {
                    problems.push(("start", "A custom range needs a start time.".to_string()));
                    None
                }
                v => {
                    let t = local_time_ms(v);
                    if t.is_none() {
                        problems.push(("start", format!("Start {v:?} is not a date and time.")));
                    }
                    t
                }
            };
            let end = match input.end.trim() {
                "" => None,
                v => {
                    let t = local_time_ms(v);
                    if t.is_none() {
                        problems.push(("end", format!("End {v:?} is not a date and time.")));
                    }
                    t
                }
            };
            if let Some(s) = start
                && s >= end.unwrap_or(now_ms)
            {
                let what = if end.is_some() { "the end" } else { "now" };
                problems.push(("start", format!("Start must be before {what}.")));
            }
            (
                start.map(iso).unwrap_or_default(),
                end.map(iso).unwrap_or_default(),
            )
        }
    };
    let limit = match input.limit.trim() {
        "" => 20,
        v => match v.parse::<u32>() {
            Ok(n @ 1..=MAX_LIMIT) => n,
            _ => {
                problems.push((
                    "limit",
                    format!("Limit {v:?} must be a whole number from 1 to {MAX_LIMIT}."),
                ));
                20
            }
        },
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(pb::SearchTracesRequest {
        namespace,
        service,
        errors_only: input.errors_only,
        min_duration,
        start,
        end,
        limit,
    })
}

/// A trace id as typed or pasted: 32 hex characters, or a whole `traceparent` header value
/// (`00-<trace id>-<span id>-01`). Lowercased.
pub fn parse_trace_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    let id = match s.split('-').collect::<Vec<_>>().as_slice() {
        [_, id, _, _] => id.to_string(),
        _ => s.to_string(),
    };
    let id = id.to_ascii_lowercase();
    if s.is_empty() {
        Err("Enter a trace id.".into())
    } else if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Err(format!(
            "{s:?} is not a trace id: 32 hexadecimal characters (or a traceparent header value)."
        ))
    } else if id.bytes().all(|b| b == b'0') {
        Err("The all-zero trace id is not a trace.".into())
    } else {
        Ok(id)
    }
}

/// "850 µs", "12.3 ms", "1.24 s".
pub fn fmt_ns(ns: i64) -> String {
    let ns = ns.max(0) as f64;
    if ns < 1e6 {
        format!("{:.0} µs", ns / 1e3)
    } else if ns < 1e8 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns < 1e9 {
        format!("{:.0} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Local wall-clock time with milliseconds, "14:03:07.125".
pub fn clock(ms: f64) -> String {
    if ms.is_nan() {
        return "—".into();
    }
    let d = js_sys::Date::new(&JsValue::from_f64(ms));
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        d.get_hours(),
        d.get_minutes(),
        d.get_seconds(),
        d.get_milliseconds()
    )
}

/// An RFC 3339 time with up to nanoseconds, as ms since the epoch (the browser's parser is
/// only sure to read three fractional digits).
pub fn rfc3339_ms(s: &str) -> f64 {
    let (head, frac_and_zone) = match s.split_once('.') {
        Some(x) => x,
        None => return crate::ui::parse_time(s),
    };
    let digits = frac_and_zone
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(frac_and_zone.len());
    let (frac, zone) = frac_and_zone.split_at(digits);
    let ms: String = frac.chars().chain("000".chars()).take(3).collect();
    crate::ui::parse_time(&format!("{head}.{ms}{zone}"))
}

/// An input handler that writes the input's value into one field of the form.
fn setter(
    input: RwSignal<SearchInput>,
    f: fn(&mut SearchInput, String),
) -> impl Fn(leptos::ev::Event) + Copy + 'static {
    move |e| input.update(|i| f(i, event_target_value(&e)))
}

#[component]
pub fn TracesPage() -> impl IntoView {
    let search = expect_context::<TraceSearch>();
    let ctx = Ctx::get();
    let services: Live<pb::Service> = live(ctx.token());
    let input = search.input;
    let set = move |f: fn(&mut SearchInput, String)| setter(input, f);
    let err = move |field: &'static str| {
        move || {
            search.problem(field).map(|m| {
                view! { <p class="field-error" role="alert" data-field=field>{m}</p> }
            })
        }
    };
    let submit = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        search.run();
    };
    let custom = move || input.with(|i| i.range == Range::Custom);
    view! {
        <section>
            <div class="page-head">
                <h1>"Traces"</h1>
                <p class="sub">"Requests the proxies kept as traces (head sampling, plus every errored or slow request). Open one to see its spans."</p>
            </div>
            <OpenById />
            <form class="card search" on:submit=submit aria-label="Search traces">
                <LiveState synced=services.synced error=services.error />
                <div class="row">
                    <div class="field">
                        <label for="trace-service">"Service"</label>
                        <select id="trace-service" on:change=set(|i, v| i.service = v)>
                            <option value="" prop:selected=move || input.with(|i| i.service.is_empty())>"Any service"</option>
                            {move || {
                                services
                                    .items
                                    .get()
                                    .iter()
                                    .map(|s| {
                                        let k = crate::ui::key_of(&s.metadata);
                                        let v = k.clone();
                                        view! { <option value=k.clone() prop:selected=move || input.with(|i| i.service == v)>{k.clone()}</option> }
                                    })
                                    .collect_view()
                            }}
                        </select>
                        <small>"Traces with at least one span recorded by this service's proxies."</small>
                        {err("service")}
                    </div>
                    <div class="field">
                        <label for="trace-min-duration">"Minimum duration"</label>
                        <input id="trace-min-duration" type="text" placeholder="e.g. 250ms" prop:value=move || input.with(|i| i.min_duration.clone()) on:input=set(|i, v| i.min_duration = v) />
                        <small>"A span at least this long; empty: any."</small>
                        {err("min-duration")}
                    </div>
                    <div class="field">
                        <label for="trace-range">"Time range"</label>
                        <select id="trace-range" on:change=set(|i, v| i.range = Range::from_value(&v))>
                            {Range::ALL
                                .into_iter()
                                .map(|r| view! { <option value=r.value() prop:selected=move || input.with(|i| i.range == r)>{r.label()}</option> })
                                .collect_view()}
                        </select>
                    </div>
                    <div class="field narrow">
                        <label for="trace-limit">"Limit"</label>
                        <input id="trace-limit" type="text" inputmode="numeric" prop:value=move || input.with(|i| i.limit.clone()) on:input=set(|i, v| i.limit = v) />
                        <small>"1 to 200, newest first."</small>
                        {err("limit")}
                    </div>
                </div>
                <Show when=custom>
                    <div class="row">
                        <div class="field">
                            <label for="trace-start">"From"</label>
                            <input id="trace-start" type="datetime-local" step="1" prop:value=move || input.with(|i| i.start.clone()) on:input=set(|i, v| i.start = v) />
                            {err("start")}
                        </div>
                        <div class="field">
                            <label for="trace-end">"To"</label>
                            <input id="trace-end" type="datetime-local" step="1" prop:value=move || input.with(|i| i.end.clone()) on:input=set(|i, v| i.end = v) />
                            <small>"Empty: now."</small>
                            {err("end")}
                        </div>
                    </div>
                </Show>
                <div class="row actions-row">
                    <label class="toggle">
                        <input type="checkbox" prop:checked=move || input.with(|i| i.errors_only) on:change=move |e| input.update(|i| i.errors_only = event_target_checked(&e)) />
                        "Errors only"
                    </label>
                    <button type="submit" class="primary" disabled=move || search.searching.get()>
                        {move || if search.searching.get() { "Searching…" } else { "Search" }}
                    </button>
                </div>
            </form>
            {move || search.error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
            <Results search=search />
        </section>
    }
}

/// Paste a trace id (or follow a link) to open that trace.
#[component]
fn OpenById() -> impl IntoView {
    let text = RwSignal::new(String::new());
    let problem = RwSignal::new(None::<String>);
    let open = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        match parse_trace_id(&text.get_untracked()) {
            Ok(id) => navigate(&format!("/traces/{id}")),
            Err(m) => problem.set(Some(m)),
        }
    };
    view! {
        <form class="open-trace" on:submit=open aria-label="Open a trace by id">
            <label for="trace-id">"Trace id"</label>
            <input id="trace-id" type="text" placeholder="32 hex characters, or a traceparent" autocomplete="off" spellcheck="false"
                prop:value=move || text.get()
                on:input=move |e| { text.set(event_target_value(&e)); problem.set(None); } />
            <button type="submit">"Open trace"</button>
            {move || problem.get().map(|m| view! { <p class="field-error" role="alert" data-field="trace-id">{m}</p> })}
        </form>
    }
}

#[component]
fn Results(search: TraceSearch) -> impl IntoView {
    let ctx = Ctx::get();
    let longest = Memo::new(move |_| {
        search.results.with(|r| {
            r.iter()
                .flatten()
                .map(|t| t.duration_nanos)
                .max()
                .unwrap_or(0)
                .max(1)
        })
    });
    // `data-answered-at` changes with every answer, so a test can tell a new list from the old.
    view! {
        <div class="results" data-answered-at=move || search.answered_at.get().to_string()>
        {move || match search.results.get() {
            None => view! { <p class="empty">"Choose filters and press Search."</p> }.into_any(),
            Some(list) if list.is_empty() => view! {
                <p class="empty" data-empty="traces">
                    "No traces match. Proxies keep a share of requests (MeshConfig "
                    <code>"spec.tracing.samplingPercent"</code>
                    ", 1% unless set) plus every errored or slow one, and send them within a second or two; widen the time range or drop a filter."
                </p>
            }.into_any(),
            Some(list) => {
                let n = list.len();
                let asked = search.answered_at.get_untracked();
                view! {
                    <p class="muted result-count">
                        {move || format!("{n} trace{} · searched {} ago", if n == 1 { "" } else { "s" }, human_ms(ctx.now.get() - asked))}
                    </p>
                    <table class="list traces">
                        <thead>
                            <tr><th>"Trace"</th><th>"Root"</th><th>"Started"</th><th>"Spans"</th><th>"Services"</th><th class="dur">"Duration"</th></tr>
                        </thead>
                        <tbody>
                            {list.into_iter().map(|t| view! { <ResultRow t=t longest=longest /> }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            }
        }}
        </div>
    }
}

#[component]
fn ResultRow(t: pb::TraceSummary, longest: Memo<i64>) -> impl IntoView {
    let ctx = Ctx::get();
    let href = format!("/traces/{}", t.trace_id);
    let open = href.clone();
    let short: String = t.trace_id.chars().take(8).collect();
    let started = rfc3339_ms(&t.start);
    let dur = t.duration_nanos;
    let width = move || {
        let pct = dur.max(0) as f64 / longest.get() as f64 * 100.0;
        format!("width: {:.2}%", pct.clamp(0.5, 100.0))
    };
    let services = t.services.join(", ");
    let (id, title) = (t.trace_id.clone(), t.trace_id.clone());
    view! {
        <tr
            class="trace-row"
            class:error=t.error
            data-trace-id=id
            data-span-count=t.span_count.to_string()
            on:click=move |e: leptos::ev::MouseEvent| {
                // A click on the id link was handled by the link (which prevented the default);
                // modifier clicks are left to the browser (new tab).
                if !e.default_prevented() && e.button() == 0 && !e.ctrl_key() && !e.meta_key() && !e.shift_key() {
                    navigate(&open);
                }
            }
        >
            <td><Link href=href><code title=title>{short}</code></Link></td>
            <td>
                <strong>{t.root_service.clone()}</strong>" "
                <span class="muted">{t.root_name.clone()}</span>
                {t.error.then(|| view! { " " <span class="badge bad">"error"</span> })}
            </td>
            <td title=t.start.clone()>{clock(started)}<br /><small class="muted">{move || format!("{} ago", human_ms(ctx.now.get() - started))}</small></td>
            <td class="num">{t.span_count}</td>
            <td>{services}</td>
            <td class="dur">
                <div class="durbar" aria-hidden="true"><span class:error=t.error style=width></span></div>
                <span class="num">{fmt_ns(dur)}</span>
            </td>
        </tr>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_api_reads_them() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250.0));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000.0));
        assert_eq!(parse_duration_ms(" 2h "), Ok(7_200_000.0));
        for bad in ["", "250", "fast", "250 ms", "1.5s", "3w"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trace_ids_and_traceparents_are_accepted_lowercased() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(parse_trace_id(id).as_deref(), Ok(id));
        assert_eq!(parse_trace_id(&id.to_uppercase()).as_deref(), Ok(id));
        let header = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(parse_trace_id(&header).as_deref(), Ok(id));
        for bad in [
            "",
            "xyz",
            &id[1..],
            &"0".repeat(32),
            "4bf92f3577b34da6a3ce929d0e0e473g",
        ] {
            assert!(parse_trace_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_are_shown_in_a_fitting_unit() {
        assert_eq!(fmt_ns(850_000), "850 µs");
        assert_eq!(fmt_ns(12_340_000), "12.3 ms");
        assert_eq!(fmt_ns(250_000_000), "250 ms");
        assert_eq!(fmt_ns(1_240_000_000), "1.24 s");
        assert_eq!(fmt_ns(-5), "0 µs");
    }
}
