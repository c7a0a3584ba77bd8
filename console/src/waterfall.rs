//! One trace (`GetTrace`) as a waterfall: a row per span, indented by its depth in the
//! parent/child tree, with a bar placed by its start and sized by its duration against the
//! whole trace; clicking a span shows everything the proxy recorded about it. The tree is
//! built here from the spans' parent ids ([`rows`]); spans whose parent was never reported
//! (not sampled there, still on its way, or from an app outside the mesh) are shown as
//! roots and marked, never dropped.

use std::collections::{BTreeMap, BTreeSet};

use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::{ApiError, client};
use crate::pb;
use crate::traces::{clock, fmt_ns, parse_trace_id};
use crate::ui::{Ctx, Link};

/// One line of the waterfall.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Index into the trace's spans.
    pub span: usize,
    /// 0 for a root.
    pub depth: usize,
    /// The span names a parent that is not in the trace.
    pub orphan: bool,
}

/// The spans in display order: each root by start time, then its children depth-first, each
/// level by start time. Every span appears exactly once, whatever the parent ids say (a
/// cycle or a duplicate id is broken where it is found).
pub fn rows(spans: &[pb::Span]) -> Vec<Row> {
    let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in spans.iter().enumerate() {
        by_id.entry(s.span_id.as_str()).or_insert(i);
    }
    let order = |a: &usize, b: &usize| {
        (spans[*a].start_unix_nanos, *a).cmp(&(spans[*b].start_unix_nanos, *b))
    };
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match by_id.get(s.parent_span_id.as_str()) {
            Some(&p) if !s.parent_span_id.is_empty() && p != i => {
                children.entry(p).or_default().push(i)
            }
            _ => roots.push(i),
        }
    }
    roots.sort_by(order);
    for c in children.values_mut() {
        c.sort_by(order);
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut seen = BTreeSet::new();
    let walk = |start: usize, out: &mut Vec<Row>, seen: &mut BTreeSet<usize>| {
        let mut stack = vec![(start, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            let s = &spans[i];
            out.push(Row {
                span: i,
                depth,
                orphan: depth == 0 && !s.parent_span_id.is_empty(),
            });
            if let Some(c) = children.get(&i) {
                stack.extend(c.iter().rev().map(|&c| (c, depth + 1)));
            }
        }
    };
    for r in roots {
        walk(r, &mut out, &mut seen);
    }
    // Spans only reachable through a cycle of parent ids: show them as roots.
    let mut rest: Vec<usize> = (0..spans.len()).filter(|i| !seen.contains(i)).collect();
    rest.sort_by(order);
    for r in rest {
        walk(r, &mut out, &mut seen);
    }
    out
}

/// A span failed: the proxy made the response, or the status is a 5xx.
pub fn is_error(s: &pb::Span) -> bool {
    !s.error.is_empty() || s.status_code >= 500
}

/// The trace's first start and last end (ns since the epoch).
fn extent(spans: &[pb::Span]) -> (i64, i64) {
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_unix_nanos.saturating_add(s.duration_nanos.max(0)))
        .max()
        .unwrap_or(start);
    (start, end.max(start))
}

/// What the page knows about the trace.
#[derive(Clone)]
enum Loaded {
    Loading,
    Failed(ApiError),
    Trace(pb::Trace),
}

#[component]
pub fn TracePage(trace_id: String) -> impl IntoView {
    let back = view! { <p class="back"><Link href="/traces">"← Traces"</Link></p> };
    let id = match parse_trace_id(&trace_id) {
        Ok(id) => id,
        Err(why) => {
            return view! {
                <section>
                    {back}
                    <h1>"Trace"</h1>
                    <p class="banner error" role="alert" data-field="trace-id">{why}</p>
                </section>
            }
            .into_any();
        }
    };
    let state = RwSignal::new(Loaded::Loading);
    let load = {
        let id = id.clone();
        move || {
            let token = Ctx::get().token();
            let id = id.clone();
            state.set(Loaded::Loading);
            spawn_local(async move {
                let req = pb::GetTraceRequest { trace_id: id };
                state.set(match client(&token).get_trace(req).await {
                    Ok(t) => Loaded::Trace(t.into_inner()),
                    Err(s) => Loaded::Failed(ApiError::from_status(&s)),
                });
            });
        }
    };
    load();
    let reload = load.clone();
    let title = id.clone();
    view! {
        <section>
            {back}
            <div class="page-head">
                <h1>"Trace " <code class="id">{title}</code></h1>
                <button type="button" on:click=move |_| reload()>"Reload"</button>
                <p class="sub">"Spans arrive from each proxy within a second or two; reload to pick up late ones."</p>
            </div>
            {move || match state.get() {
                Loaded::Loading => view! { <p class="loading" aria-live="polite">"Loading the trace…"</p> }.into_any(),
                Loaded::Failed(e) if e.code == tonic::Code::NotFound => view! {
                    <p class="empty" role="alert" data-empty="trace">
                        "No spans of this trace are stored: it was not sampled, has not arrived yet, or retention removed it. ("
                        {e.message.clone()} ")"
                    </p>
                }.into_any(),
                Loaded::Failed(e) => view! { <p class="banner error" role="alert">{e.summary()}</p> }.into_any(),
                Loaded::Trace(t) => view! { <Waterfall trace=t /> }.into_any(),
            }}
        </section>
    }
    .into_any()
}

#[component]
fn Waterfall(trace: pb::Trace) -> impl IntoView {
    let spans = StoredValue::new(trace.spans);
    let rows = spans.with_value(|s| rows(s));
    let (start, end) = spans.with_value(|s| extent(s));
    let total = (end - start).max(1);
    let selected = RwSignal::new(None::<usize>);
    let services: BTreeSet<String> =
        spans.with_value(|s| s.iter().map(|s| s.service.clone()).collect());
    let errors = spans.with_value(|s| s.iter().filter(|s| is_error(s)).count());
    let count = rows.len();
    let ticks = (0..=4)
        .map(|q| {
            let at = total as f64 * f64::from(q) / 4.0;
            let style = format!("left: {}%", q * 25);
            view! { <span class="tick" style=style>{fmt_ns(at as i64)}</span> }
        })
        .collect_view();
    let lines = rows
        .into_iter()
        .map(|row| {
            let s = spans.with_value(|s| s[row.span].clone());
            let i = row.span;
            let left = (s.start_unix_nanos - start) as f64 / total as f64 * 100.0;
            let width = (s.duration_nanos.max(0) as f64 / total as f64 * 100.0).max(0.2);
            let bar = format!("left: {left:.3}%; width: {width:.3}%");
            let indent = format!("padding-left: {:.2}rem", 0.4 + row.depth as f64 * 1.1);
            let kind = s.kind.to_ascii_lowercase();
            let err = is_error(&s);
            let label = format!(
                "{} {} {}, {}",
                s.service,
                s.kind.to_ascii_lowercase(),
                s.name,
                fmt_ns(s.duration_nanos)
            );
            view! {
                <li
                    class=format!("span {kind}")
                    class:error=err
                    class:selected=move || selected.get() == Some(i)
                    data-span-id=s.span_id.clone()
                    data-parent-id=s.parent_span_id.clone()
                    data-depth=row.depth.to_string()
                    data-service=s.service.clone()
                    data-kind=s.kind.clone()
                >
                    <button type="button" aria-label=label aria-pressed=move || (selected.get() == Some(i)).to_string() on:click=move |_| selected.set(Some(i))>
                        <span class="span-label" style=indent>
                            <span class="kind">{if s.kind == "SERVER" { "in" } else { "out" }}</span>
                            <strong>{s.service.clone()}</strong>
                            {(!s.peer_service.is_empty()).then(|| view! { <span class="muted">{if s.kind == "SERVER" { " ← " } else { " → " }}{s.peer_service.clone()}</span> })}
                            " "
                            <span class="name">{s.name.clone()}</span>
                            {row.orphan.then(|| view! { <span class="badge warn" title="Its parent span is not in this trace">"parent missing"</span> })}
                            {err.then(|| view! { <span class="badge bad">{if s.status_code > 0 { s.status_code.to_string() } else { "error".to_string() }}</span> })}
                        </span>
                        <span class="span-track"><span class="span-bar" style=bar></span></span>
                        <span class="span-dur num">{fmt_ns(s.duration_nanos)}</span>
                    </button>
                </li>
            }
        })
        .collect_view();
    view! {
        <dl class="facts trace-facts">
            <dt>"Started"</dt><dd>{clock(start as f64 / 1e6)}</dd>
            <dt>"Duration"</dt><dd>{fmt_ns(total)}</dd>
            <dt>"Spans"</dt><dd data-spans=count.to_string()>{count}</dd>
            <dt>"Services"</dt><dd>{services.into_iter().collect::<Vec<_>>().join(", ")}</dd>
            <dt>"Errors"</dt><dd>{if errors == 0 { "none".to_string() } else { format!("{errors} span(s)") }}</dd>
        </dl>
        <div class="waterfall card">
            <div class="wf-head" aria-hidden="true">
                <span class="span-label">"Span"</span>
                <span class="span-track axis">{ticks}</span>
                <span class="span-dur">"Duration"</span>
            </div>
            <ol class="spans" aria-label="Spans of this trace">{lines}</ol>
            <p class="legend muted">
                <span class="swatch client"></span>" out: the calling proxy (CLIENT) "
                <span class="swatch server"></span>" in: the called proxy (SERVER) "
                <span class="swatch error"></span>" failed (5xx or a proxy-made error)"
            </p>
        </div>
        {move || match selected.get() {
            None => view! { <p class="hint">"Select a span to see its details."</p> }.into_any(),
            Some(i) => {
                let s = spans.with_value(|s| s[i].clone());
                let parent = spans.with_value(|all| all.iter().position(|p| !s.parent_span_id.is_empty() && p.span_id == s.parent_span_id));
                view! { <SpanDetails span=s trace_start=start parent=parent selected=selected /> }.into_any()
            }
        }}
    }
}

#[component]
fn SpanDetails(
    span: pb::Span,
    trace_start: i64,
    parent: Option<usize>,
    selected: RwSignal<Option<usize>>,
) -> impl IntoView {
    let or_dash = |v: &str| {
        if v.is_empty() {
            "—".to_string()
        } else {
            v.to_string()
        }
    };
    let status = match (span.status_code, span.error.is_empty()) {
        (0, true) => "— (no HTTP response head)".to_string(),
        (c, _) => c.to_string(),
    };
    let kind = match span.kind.as_str() {
        "CLIENT" => "CLIENT (outbound: this proxy called the peer)".to_string(),
        "SERVER" => "SERVER (inbound: this proxy received the call)".to_string(),
        k => k.to_string(),
    };
    let start = format!(
        "{} (+{} into the trace)",
        clock(span.start_unix_nanos as f64 / 1e6),
        fmt_ns(span.start_unix_nanos - trace_start)
    );
    let parent_view = if span.parent_span_id.is_empty() {
        view! { <span>"— (root)"</span> }.into_any()
    } else {
        let id = span.parent_span_id.clone();
        match parent {
            Some(p) => view! {
                <button type="button" class="link" on:click=move |_| selected.set(Some(p))><code>{id}</code></button>
            }
            .into_any(),
            None => view! { <span><code>{id}</code>" (not in this trace)"</span> }.into_any(),
        }
    };
    let err = is_error(&span);
    view! {
        <article class="card span-details" aria-label="Span details" data-span-id=span.span_id.clone()>
            <header>
                <h2>{span.service.clone()}" · "{span.name.clone()}</h2>
                {err.then(|| view! { <span class="badge bad">"error"</span> })}
            </header>
            <dl class="facts">
                <dt>"Kind"</dt><dd data-detail="kind">{kind}</dd>
                <dt>"Service"</dt><dd data-detail="service">{format!("{}/{}", span.namespace, span.service)}</dd>
                <dt>"Peer service"</dt><dd data-detail="peer-service">{or_dash(&span.peer_service)}</dd>
                <dt>"Peer identity"</dt><dd data-detail="peer-identity"><code class="id">{or_dash(&span.peer_identity)}</code></dd>
                <dt>"Route"</dt><dd data-detail="route">{or_dash(&span.route)}</dd>
                <dt>"Status"</dt><dd data-detail="status">{status}</dd>
                <dt>"Error"</dt><dd data-detail="error">{or_dash(&span.error)}</dd>
                <dt>"Attempt"</dt><dd data-detail="attempt">{span.attempt}</dd>
                <dt>"Bytes"</dt><dd data-detail="bytes">{format!("request {} · response {} (declared lengths; 0 when none was declared)", span.request_bytes, span.response_bytes)}</dd>
                <dt>"QUIC connection"</dt><dd data-detail="quic-connection"><code>{or_dash(&span.quic_connection_id)}</code></dd>
                <dt>"Endpoint"</dt><dd data-detail="endpoint">{or_dash(&span.endpoint)}</dd>
                <dt>"Start"</dt><dd data-detail="start">{start}</dd>
                <dt>"Duration"</dt><dd data-detail="duration">{fmt_ns(span.duration_nanos)}</dd>
                <dt>"Span id"</dt><dd data-detail="span-id"><code>{span.span_id.clone()}</code></dd>
                <dt>"Parent span"</dt><dd data-detail="parent-span-id">{parent_view}</dd>
            </dl>
        </article>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start: i64) -> pb::Span {
        pb::Span {
            span_id: id.into(),
            parent_span_id: parent.into(),
            start_unix_nanos: start,
            duration_nanos: 10,
            ..Default::default()
        }
    }

    fn shape(spans: &[pb::Span]) -> Vec<(String, usize, bool)> {
        rows(spans)
            .into_iter()
            .map(|r| (spans[r.span].span_id.clone(), r.depth, r.orphan))
            .collect()
    }

    #[test]
    fn children_follow_their_parent_depth_first_in_start_order() {
        // Stored order is by start; the tree puts b's child before c.
        let spans = [
            span("a", "", 0),
            span("b", "a", 1),
            span("c", "a", 2),
            span("d", "b", 3),
        ];
        let want = [("a", 0), ("b", 1), ("d", 2), ("c", 1)];
        let got = shape(&spans);
        assert_eq!(got.len(), 4);
        for ((id, depth, orphan), (wid, wdepth)) in got.iter().zip(want) {
            assert_eq!((id.as_str(), *depth, *orphan), (wid, wdepth, false));
        }
    }

    #[test]
    fn a_span_whose_parent_is_missing_is_a_marked_root() {
        let spans = [span("a", "", 0), span("x", "0000000000000099", 5)];
        let got = shape(&spans);
        assert_eq!(got[1], ("x".to_string(), 0, true));
        assert!(!got[0].2);
    }

    #[test]
    fn cycles_and_self_parents_still_show_every_span_once() {
        let spans = [span("a", "b", 0), span("b", "a", 1), span("s", "s", 2)];
        let got = shape(&spans);
        let mut ids: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b", "s"]);
        // The self-parented span is a root; the cycle follows, entered at its earliest span.
        assert_eq!(got[0], ("s".to_string(), 0, true));
        assert_eq!(got[1], ("a".to_string(), 0, true));
        assert_eq!(got[2], ("b".to_string(), 1, false));
    }

    #[test]
    fn errors_are_5xx_or_a_proxy_made_error() {
        let mut s = span("a", "", 0);
        s.status_code = 503;
        assert!(is_error(&s));
        s.status_code = 404;
        assert!(!is_error(&s));
        s.error = "no_route".into();
        assert!(is_error(&s));
    }
}
