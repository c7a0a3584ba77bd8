//! Services and their endpoints (registered workloads), live from WatchServices and
//! WatchWorkloads, with lease countdowns.

use std::collections::BTreeMap;

use futures_util::future::{AbortHandle, Abortable};
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::{ApiError, Live, client, live, sleep};
use crate::pb;
use crate::ui::{Ctx, LiveState, human_ms, parse_time};

#[component]
pub fn ServicesPage() -> impl IntoView {
    let ctx = Ctx::get();
    let services: Live<pb::Service> = live(ctx.token());
    let workloads: Live<pb::Workload> = live(ctx.token());
    let leases = lease_poller(ctx.token());
    view! {
        <section>
            <div class="page-head">
                <h1>"Services"</h1>
                <p class="sub">"Every service in the mesh and the endpoints its proxies registered. Updates live."</p>
            </div>
            <LiveState synced=services.synced error=services.error />
            <LiveState synced=workloads.synced error=workloads.error />
            <Show when=move || services.synced.get() && services.items.with(Vec::is_empty)>
                <p class="empty">"No services yet. Apply one with " <code>"quiverctl apply -f mesh.yaml"</code> "."</p>
            </Show>
            <For
                each=move || services.items.get()
                key=|s| (crate::ui::key_of(&s.metadata), s.metadata.as_ref().map_or(0, |m| m.resource_version))
                children=move |s| view! { <ServiceCard service=s workloads=workloads leases=leases /> }
            />
        </section>
    }
}

#[component]
fn ServiceCard(
    service: pb::Service,
    workloads: Live<pb::Workload>,
    leases: Leases,
) -> impl IntoView {
    let ctx = Ctx::get();
    let meta = service.metadata.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let (ns, name) = (meta.namespace.clone(), meta.name.clone());
    let account = if spec.service_account.is_empty() {
        name.clone()
    } else {
        spec.service_account.clone()
    };
    let ports = spec
        .ports
        .iter()
        .map(|p| format!("{} {}/{}", p.name, p.port, p.protocol))
        .collect::<Vec<_>>()
        .join(", ");
    let subsets = spec
        .subsets
        .iter()
        .map(|s| {
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            format!("{} ({labels})", s.name)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let endpoints = {
        let (ns, name) = (ns.clone(), name.clone());
        Memo::new(move |_| {
            workloads.items.with(|w| {
                w.iter()
                    .filter(|w| {
                        w.metadata.as_ref().is_some_and(|m| m.namespace == ns)
                            && w.spec.as_ref().is_some_and(|s| s.service == name)
                    })
                    .cloned()
                    .collect::<Vec<_>>()
            })
        })
    };
    let count = move || endpoints.with(Vec::len);
    let title = format!("{ns}/{name}");
    let caption = format!("Endpoints of {title}");
    let data_service = title.clone();
    view! {
        <article class="card" data-service=data_service>
            <header>
                <h2>{title}</h2>
                <span class="pill">{move || match count() { 1 => "1 endpoint".to_string(), n => format!("{n} endpoints") }}</span>
            </header>
            <dl class="facts">
                <dt>"Ports"</dt><dd>{if ports.is_empty() { "—".to_string() } else { ports }}</dd>
                <dt>"Subsets"</dt><dd>{if subsets.is_empty() { "—".to_string() } else { subsets }}</dd>
                <dt>"Service account"</dt><dd>{account}</dd>
            </dl>
            <Show
                when=move || { count() > 0 }
                fallback=|| view! { <p class="empty">"No endpoints registered."</p> }
            >
                <table>
                    <caption class="visually-hidden">{caption.clone()}</caption>
                    <thead>
                        <tr><th>"Address"</th><th>"Version"</th><th>"Zone"</th><th>"Identity"</th><th>"Registered"</th><th>"Lease"</th></tr>
                    </thead>
                    <tbody>
                        <For
                            each=move || endpoints.get()
                            key=|w| (crate::ui::key_of(&w.metadata), w.metadata.as_ref().map_or(0, |m| m.resource_version))
                            children=move |w| {
                                let spec = w.spec.clone().unwrap_or_default();
                                let meta = w.metadata.clone().unwrap_or_default();
                                let status = w.status.clone().unwrap_or_default();
                                let wkey = (meta.namespace.clone(), meta.name.clone());
                                let version = spec.labels.get("version").cloned().unwrap_or_else(|| "—".into());
                                let created = parse_time(&meta.created_at);
                                let expires = move || leases.expiry.with(|l| l.get(&wkey).copied()).unwrap_or(f64::NAN);
                                let ready = status.ready;
                                let age = move || {
                                    if created.is_nan() { "—".to_string() } else { format!("{} ago", human_ms(ctx.now.get() - created)) }
                                };
                                let lease = Signal::derive(move || {
                                    let expires = expires();
                                    let left = expires - ctx.now.get();
                                    if expires.is_nan() {
                                        (leases.error.get().unwrap_or_else(|| "checking…".to_string()), "warn")
                                    } else if left <= 0.0 {
                                        ("lapsed".to_string(), "bad")
                                    } else if !ready {
                                        (format!("not ready, {} left", human_ms(left)), "warn")
                                    } else {
                                        (format!("healthy, {} left", human_ms(left)), "good")
                                    }
                                });
                                view! {
                                    <tr>
                                        <td><code>{spec.address.clone()}</code></td>
                                        <td>{version}</td>
                                        <td>{if spec.zone.is_empty() { "—".to_string() } else { spec.zone.clone() }}</td>
                                        <td><code class="id">{spec.spiffe_id.clone()}</code></td>
                                        <td>{age}</td>
                                        <td><span class=move || format!("health {}", lease.get().1)>{move || lease.get().0}</span></td>
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </Show>
        </article>
    }
}

/// Lease expiry per workload, `(namespace, name)` -> ms since the epoch. Watch events do not
/// carry leases (a keep-alive writes no version, so it wakes no watcher): ListWorkloads does,
/// and it is asked again every few seconds while the page is open.
#[derive(Clone, Copy)]
pub struct Leases {
    expiry: RwSignal<BTreeMap<(String, String), f64>>,
    error: RwSignal<Option<String>>,
}

fn lease_poller(token: String) -> Leases {
    let leases = Leases {
        expiry: RwSignal::new(BTreeMap::new()),
        error: RwSignal::new(None),
    };
    let (abort, registration) = AbortHandle::new_pair();
    on_cleanup(move || abort.abort());
    spawn_local(async move {
        let poll = async move {
            loop {
                let req = pb::ListRequest {
                    namespace: String::new(),
                };
                match client(&token).list_workloads(req).await {
                    Ok(list) => {
                        let map = list
                            .into_inner()
                            .items
                            .iter()
                            .filter_map(|w| {
                                let m = w.metadata.as_ref()?;
                                let at = parse_time(&w.status.as_ref()?.lease_expires_at);
                                Some(((m.namespace.clone(), m.name.clone()), at))
                            })
                            .collect();
                        leases.expiry.set(map);
                        leases.error.set(None);
                    }
                    Err(s) => leases.error.set(Some(ApiError::from_status(&s).summary())),
                }
                sleep(3_000).await;
            }
        };
        let _ = Abortable::new(poll, registration).await;
    });
    leases
}
