//! Topology: the service graph from `GetServiceGraph` (request rate, error rate and latency
//! per service and per caller→callee edge, over a look-back window), asked again every five
//! seconds while the page is open. Drawn as an SVG layered left to right by call depth, with
//! the same numbers in tables. The numbers are the proxies' per-edge counts (every request,
//! not only sampled ones); this page only lays them out. A service with a running canary
//! (Progressing or Paused, from the live Canary list) carries a badge with the canary's
//! weight, in the drawing and in a line above it (a service without traffic is not drawn).

use std::collections::BTreeMap;

use futures_util::future::{AbortHandle, Abortable};
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::{ApiError, Live, client, live, sleep};
use crate::canary_view::is_running;
use crate::pb;
use crate::ui::{Ctx, Link, human_ms, key_of};

/// The window choices; the API accepts 1s..1h.
const WINDOWS: [&str; 4] = ["1m", "5m", "15m", "1h"];
/// How often the graph is asked for again.
const POLL_MS: i32 = 5_000;

/// Node box and grid sizes in SVG units.
const NODE_W: f64 = 200.0;
const NODE_H: f64 = 66.0;
const COL_W: f64 = 300.0;
const ROW_H: f64 = 96.0;
const MARGIN: f64 = 16.0;

/// A service's place in the drawing.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    pub layer: usize,
    pub row: usize,
}

/// "namespace/service", the key of a node.
fn node_key(ns: &str, svc: &str) -> String {
    format!("{ns}/{svc}")
}

/// Layers by call depth: a service nobody in the window called is in layer 0, a callee one
/// layer right of its deepest caller. Cycles (a calls b calls a) stop growing after as many
/// rounds as there are services, so every layer is finite. Within a layer, services are
/// ordered by the mean row of their callers (fewer crossing edges), then by name.
pub fn layout(nodes: &[String], edges: &[(String, String)]) -> BTreeMap<String, Placed> {
    let mut layer: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (from, to) in edges {
            if from == to {
                continue;
            }
            let want = layer.get(from.as_str()).copied().unwrap_or(0) + 1;
            if let Some(l) = layer.get_mut(to.as_str())
                && *l < want
                && want < nodes.len().max(1)
            {
                *l = want;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let depth = layer.values().copied().max().unwrap_or(0);
    let mut placed: BTreeMap<String, Placed> = BTreeMap::new();
    for l in 0..=depth {
        let mut members: Vec<(f64, &str)> = layer
            .iter()
            .filter(|(_, ll)| **ll == l)
            .map(|(n, _)| {
                let rows: Vec<f64> = edges
                    .iter()
                    .filter(|(_, to)| to == n)
                    .filter_map(|(from, _)| placed.get(from.as_str()))
                    .map(|p| p.row as f64)
                    .collect();
                let mean = if rows.is_empty() {
                    f64::MAX
                } else {
                    rows.iter().sum::<f64>() / rows.len() as f64
                };
                (mean, *n)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        for (row, (_, n)) in members.into_iter().enumerate() {
            placed.insert(n.to_string(), Placed { layer: l, row });
        }
    }
    placed
}

/// "15.2/s", "0.03/s".
pub fn fmt_rate(r: f64) -> String {
    if r == 0.0 {
        "0/s".into()
    } else if r < 0.1 {
        format!("{r:.3}/s")
    } else if r < 10.0 {
        format!("{r:.2}/s")
    } else {
        format!("{r:.1}/s")
    }
}

/// "0%", "2.5%".
pub fn fmt_share(e: f64) -> String {
    if e == 0.0 {
        "0%".into()
    } else {
        format!("{:.1}%", e * 100.0)
    }
}

/// "3.4 ms"; "—" when there were no requests.
pub fn fmt_ms(ms: f64, rate: f64) -> String {
    if rate == 0.0 {
        "—".into()
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// A canary driving its service's split now.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningCanary {
    /// "namespace/service", as [`node_key`].
    pub service: String,
    /// "namespace/name" of the Canary.
    pub canary: String,
    pub phase: String,
    pub weight: u32,
    /// In the mirror stage: the share of requests copied to the canary subset.
    pub mirror: Option<f64>,
}

impl RunningCanary {
    /// "canary 10%", "canary mirror 5%".
    fn what(&self) -> String {
        match self.mirror {
            Some(m) => format!("canary mirror {m}%"),
            None => format!("canary {}%", self.weight),
        }
    }
}

/// The canaries in `canaries` that are running (Progressing or Paused).
pub fn running_canaries(canaries: &[pb::Canary]) -> Vec<RunningCanary> {
    canaries
        .iter()
        .filter(|c| is_running(c.status.as_ref()))
        .map(|c| {
            let ns = c
                .metadata
                .as_ref()
                .map(|m| m.namespace.as_str())
                .unwrap_or_default();
            let svc = c
                .spec
                .as_ref()
                .map(|s| s.service.as_str())
                .unwrap_or_default();
            let status = c.status.clone().unwrap_or_default();
            let mirror = c
                .spec
                .as_ref()
                .and_then(|s| quiver_policy::canary::mirror_in_effect(s, Some(&status)));
            RunningCanary {
                mirror,
                service: node_key(ns, svc),
                canary: key_of(&c.metadata),
                phase: status.phase,
                weight: status.canary_weight,
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Poll {
    graph: RwSignal<Option<pb::ServiceGraph>>,
    error: RwSignal<Option<String>>,
    /// When the shown graph arrived (ms since the epoch).
    at: RwSignal<f64>,
}

/// Ask for the graph now and every [`POLL_MS`], and at once when the window changes; stops
/// when the page unmounts.
fn poller(token: String, window: RwSignal<&'static str>) -> Poll {
    let poll = Poll {
        graph: RwSignal::new(None),
        error: RwSignal::new(None),
        at: RwSignal::new(f64::NAN),
    };
    let (abort, registration) = AbortHandle::new_pair();
    on_cleanup(move || abort.abort());
    spawn_local(async move {
        let run = async move {
            loop {
                let w = window.get_untracked();
                let req = pb::GetServiceGraphRequest {
                    window: w.to_string(),
                    namespace: String::new(),
                };
                let answer = client(&token).get_service_graph(req).await;
                // An answer for a window that is no longer chosen is dropped.
                if window.get_untracked() == w {
                    match answer {
                        Ok(g) => {
                            poll.graph.set(Some(g.into_inner()));
                            poll.at.set(js_sys::Date::now());
                            poll.error.set(None);
                        }
                        Err(s) => poll.error.set(Some(ApiError::from_status(&s).summary())),
                    }
                }
                let mut waited = 0;
                while waited < POLL_MS && window.get_untracked() == w {
                    sleep(250).await;
                    waited += 250;
                }
            }
        };
        let _ = Abortable::new(run, registration).await;
    });
    poll
}

#[component]
pub fn TopologyPage() -> impl IntoView {
    let ctx = Ctx::get();
    let window = RwSignal::new("5m");
    let poll = poller(ctx.token(), window);
    let canaries: Live<pb::Canary> = live(ctx.token());
    let running = Signal::derive(move || canaries.items.with(|c| running_canaries(c)));
    let age = move || {
        let at = poll.at.get();
        if at.is_nan() {
            "not loaded yet".to_string()
        } else {
            format!("updated {} ago", human_ms(ctx.now.get() - at))
        }
    };
    view! {
        <section>
            <div class="page-head">
                <h1>"Topology"</h1>
                <div class="window-select" role="group" aria-label="Window">
                    {WINDOWS
                        .into_iter()
                        .map(|w| view! {
                            <button type="button" class:active=move || window.get() == w aria-pressed=move || (window.get() == w).to_string()
                                on:click=move |_| window.set(w)>{w}</button>
                        })
                        .collect_view()}
                </div>
                <span class="muted updated" aria-live="off" data-updated=move || poll.at.get().to_string()>{age}</span>
                <p class="sub">"Who calls whom, as the calling proxies counted it over the window (every request, sampled or not; proxies report every 10 s). Refreshed every 5 s."</p>
            </div>
            <Show when=move || running.with(|r| !r.is_empty())>
                <p class="canaries-running">"Canaries running: "
                    {move || running.get().into_iter().map(|r| {
                        let href = format!("/canaries/{}", r.canary);
                        let service = r.service.clone();
                        view! {
                            <span class="canary-running" data-canary-running=r.canary.clone() data-service=r.service.clone()>
                                <Link href=href>{service}</Link>
                                " "<span class=format!("badge canary-badge phase-{}", r.phase.to_lowercase())>{format!("{} · {}", r.what(), r.phase)}</span>" "
                            </span>
                        }
                    }).collect_view()}
                </p>
            </Show>
            {move || poll.error.get().map(|e| view! {
                <p class="banner error" role="alert">"Could not refresh the graph: " {e} {move || poll.graph.with(Option::is_some).then_some(" (showing the last answer)")}</p>
            })}
            {move || match poll.graph.get() {
                None if poll.error.with(Option::is_none) => view! { <p class="loading">"Loading…"</p> }.into_any(),
                None => ().into_any(),
                Some(g) if g.edges.is_empty() && g.nodes.is_empty() => view! {
                    <p class="empty" data-empty="topology">
                        {format!("No calls between services in the last {}. ", g.window)}
                        "The graph is drawn from what proxies in control-plane mode report: send traffic through the mesh, or choose a longer window."
                    </p>
                }.into_any(),
                Some(g) => view! { <Graph graph=g running=running /> }.into_any(),
            }}
        </section>
    }
}

#[component]
fn Graph(graph: pb::ServiceGraph, running: Signal<Vec<RunningCanary>>) -> impl IntoView {
    let badge = move |key: String| {
        running.with(|r| {
            r.iter().find(|c| c.service == key).map(|c| {
                format!(
                    "canary {}%{}",
                    c.weight,
                    if c.phase == "Paused" { " (paused)" } else { "" }
                )
            })
        })
    };
    let keys: Vec<String> = graph
        .nodes
        .iter()
        .map(|n| node_key(&n.namespace, &n.service))
        .collect();
    let edge_keys: Vec<(String, String)> = graph
        .edges
        .iter()
        .map(|e| {
            (
                node_key(&e.namespace, &e.source_service),
                node_key(&e.namespace, &e.destination_service),
            )
        })
        .collect();
    let placed = layout(&keys, &edge_keys);
    // Names alone when every service is in one namespace.
    let one_ns = graph
        .nodes
        .windows(2)
        .all(|w| w[0].namespace == w[1].namespace);
    let label = move |ns: &str, svc: &str| {
        if one_ns {
            svc.to_string()
        } else {
            format!("{ns}/{svc}")
        }
    };
    let layers = placed.values().map(|p| p.layer + 1).max().unwrap_or(1);
    let rows = placed.values().map(|p| p.row + 1).max().unwrap_or(1);
    let width = MARGIN * 2.0 + (layers - 1) as f64 * COL_W + NODE_W;
    let height = MARGIN * 2.0 + (rows - 1) as f64 * ROW_H + NODE_H;
    let pos = |k: &str| {
        placed.get(k).map(|p| {
            (
                MARGIN + p.layer as f64 * COL_W,
                MARGIN + p.row as f64 * ROW_H,
            )
        })
    };
    let edges_svg = graph
        .edges
        .iter()
        .zip(&edge_keys)
        .filter_map(|(e, (from, to))| {
            let (x1, y1) = pos(from)?;
            let (x2, y2) = pos(to)?;
            let (sx, sy) = (x1 + NODE_W, y1 + NODE_H / 2.0);
            let (tx, ty) = (x2, y2 + NODE_H / 2.0);
            // Forward edges curve right; a same-layer or backward edge loops around below.
            let d = if tx > sx {
                let dx = (tx - sx) / 2.0;
                format!("M{sx},{sy} C{},{sy} {},{ty} {tx},{ty}", sx + dx, tx - dx)
            } else {
                let drop = NODE_H;
                format!(
                    "M{sx},{sy} C{},{} {},{} {tx},{ty}",
                    sx + 80.0,
                    sy + drop * 1.5,
                    tx - 80.0,
                    ty + drop * 1.5
                )
            };
            let (mx, my) = if tx > sx {
                ((sx + tx) / 2.0, (sy + ty) / 2.0 - 6.0)
            } else {
                ((sx + tx) / 2.0, sy.max(ty) + NODE_H)
            };
            let err = e.error_rate > 0.0;
            let text = if err {
                format!(
                    "{} · {} err",
                    fmt_rate(e.request_rate),
                    fmt_share(e.error_rate)
                )
            } else {
                fmt_rate(e.request_rate)
            };
            let key = format!("{}->{}", e.source_service, e.destination_service);
            Some(view! {
                <g class="edge" class:error=err data-edge=key>
                    <path d=d marker-end=if err { "url(#arrow-bad)" } else { "url(#arrow)" } />
                    <text x=format!("{mx:.1}") y=format!("{my:.1}") text-anchor="middle">{text}</text>
                </g>
            })
        })
        .collect_view();
    let nodes_svg = graph
        .nodes
        .iter()
        .filter_map(|n| {
            let (x, y) = pos(&node_key(&n.namespace, &n.service))?;
            let err = n.error_rate > 0.0;
            let name = label(&n.namespace, &n.service);
            let line2 = format!(
                "{} in · {} err",
                fmt_rate(n.request_rate),
                fmt_share(n.error_rate)
            );
            let line3 = format!(
                "p50 {} · p99 {}",
                fmt_ms(n.p50_ms, n.request_rate),
                fmt_ms(n.p99_ms, n.request_rate)
            );
            let (tx, ty) = (x + 10.0, y + 20.0);
            let key = node_key(&n.namespace, &n.service);
            let canary = move || badge(key.clone());
            Some(view! {
                <g class="node" class:error=err data-node=n.service.clone() data-namespace=n.namespace.clone()>
                    <rect x=x.to_string() y=y.to_string() width=NODE_W.to_string() height=NODE_H.to_string() rx="6" />
                    <text x=tx.to_string() y=ty.to_string() class="node-name">{name}</text>
                    <text x=tx.to_string() y=(ty + 19.0).to_string()>{line2}</text>
                    <text x=tx.to_string() y=(ty + 36.0).to_string()>{line3}</text>
                    {move || canary().map(|b| view! {
                        <g class="canary-badge">
                            <rect x=(x + NODE_W - 112.0).to_string() y=(y - 9.0).to_string() width="106" height="18" rx="9" />
                            <text x=(x + NODE_W - 59.0).to_string() y=(y + 4.0).to_string() text-anchor="middle">{b}</text>
                        </g>
                    })}
                </g>
            })
        })
        .collect_view();
    let edge_rows = graph
        .edges
        .iter()
        .map(|e| {
            let key = format!("{}->{}", e.source_service, e.destination_service);
            let err = e.error_rate > 0.0;
            view! {
                <tr data-edge=key class:error=err data-rate=e.request_rate.to_string() data-error-rate=e.error_rate.to_string()>
                    <td>{label(&e.namespace, &e.source_service)}</td>
                    <td>{label(&e.namespace, &e.destination_service)}</td>
                    <td class="num">{fmt_rate(e.request_rate)}</td>
                    <td class="num err-cell">{fmt_share(e.error_rate)}</td>
                    <td class="num">{fmt_ms(e.p50_ms, e.request_rate)}</td>
                    <td class="num">{fmt_ms(e.p99_ms, e.request_rate)}</td>
                </tr>
            }
        })
        .collect_view();
    let node_rows = graph
        .nodes
        .iter()
        .map(|n| {
            let err = n.error_rate > 0.0;
            let key = node_key(&n.namespace, &n.service);
            view! {
                <tr data-node=n.service.clone() class:error=err data-rate=n.request_rate.to_string()>
                    <td>{label(&n.namespace, &n.service)}" "{move || badge(key.clone()).map(|b| view! { <span class="badge canary-badge">{b}</span> })}</td>
                    <td class="num">{fmt_rate(n.request_rate)}</td>
                    <td class="num err-cell">{fmt_share(n.error_rate)}</td>
                    <td class="num">{fmt_ms(n.p50_ms, n.request_rate)}</td>
                    <td class="num">{fmt_ms(n.p99_ms, n.request_rate)}</td>
                </tr>
            }
        })
        .collect_view();
    let caption = format!(
        "{} services and {} edges over the last {}",
        graph.nodes.len(),
        graph.edges.len(),
        graph.window
    );
    view! {
        <figure class="card topology">
            <svg
                class="graph"
                role="img"
                aria-label=caption.clone()
                viewBox=format!("0 0 {width:.0} {height:.0}")
                width=format!("{width:.0}")
                style=format!("max-width: 100%; height: auto; aspect-ratio: {width:.0} / {height:.0}")
            >
                <defs>
                    <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
                        <path d="M0,0 L10,5 L0,10 z" class="arrow" />
                    </marker>
                    <marker id="arrow-bad" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
                        <path d="M0,0 L10,5 L0,10 z" class="arrow bad" />
                    </marker>
                </defs>
                {edges_svg}
                {nodes_svg}
            </svg>
            <figcaption class="muted">{caption}". Red: some requests failed (5xx or a proxy-made error)."</figcaption>
        </figure>
        <h2>"Calls"</h2>
        <table class="list edges">
            <thead><tr><th>"From"</th><th>"To"</th><th>"Requests"</th><th>"Errors"</th><th>"p50"</th><th>"p99"</th></tr></thead>
            <tbody>{edge_rows}</tbody>
        </table>
        <h2>"Services"</h2>
        <table class="list nodes">
            <thead><tr><th>"Service"</th><th>"Requests in"</th><th>"Errors"</th><th>"p50"</th><th>"p99"</th></tr></thead>
            <tbody>{node_rows}</tbody>
        </table>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(nodes: &[&str], edges: &[(&str, &str)]) -> BTreeMap<String, (usize, usize)> {
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let edges: Vec<(String, String)> = edges
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        layout(&nodes, &edges)
            .into_iter()
            .map(|(k, p)| (k, (p.layer, p.row)))
            .collect()
    }

    #[test]
    fn a_chain_is_laid_out_left_to_right() {
        let p = place(
            &["catalog", "frontend", "ratings"],
            &[("frontend", "catalog"), ("catalog", "ratings")],
        );
        assert_eq!(p["frontend"], (0, 0));
        assert_eq!(p["catalog"], (1, 0));
        assert_eq!(p["ratings"], (2, 0));
    }

    #[test]
    fn a_callee_sits_right_of_its_deepest_caller() {
        // web -> api -> db and web -> db: db is in layer 2, not 1.
        let p = place(
            &["api", "db", "web"],
            &[("web", "api"), ("api", "db"), ("web", "db")],
        );
        assert_eq!(p["db"].0, 2);
    }

    #[test]
    fn cycles_end_with_finite_layers_and_every_node_placed() {
        let p = place(&["a", "b", "c"], &[("a", "b"), ("b", "a"), ("b", "c")]);
        assert_eq!(p.len(), 3);
        assert!(p.values().all(|(l, _)| *l < 3));
    }

    #[test]
    fn rows_in_a_layer_follow_their_callers() {
        // x calls q, y calls p: p is drawn next to y and q next to x.
        let p = place(&["p", "q", "x", "y"], &[("x", "q"), ("y", "p")]);
        assert_eq!((p["x"].1, p["y"].1), (0, 1));
        assert_eq!((p["q"].1, p["p"].1), (0, 1));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_rate(0.0), "0/s");
        assert_eq!(fmt_rate(15.04), "15.0/s");
        assert_eq!(fmt_rate(0.5), "0.50/s");
        assert_eq!(fmt_share(0.0), "0%");
        assert_eq!(fmt_share(0.025), "2.5%");
        assert_eq!(fmt_ms(3.25, 1.0), "3.2 ms");
        assert_eq!(fmt_ms(3.25, 0.0), "—");
    }
}
