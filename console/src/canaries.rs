//! Canaries: the live list with each canary's phase, step and weight as the controller
//! reports them, the detail page (the progress card of `canary_view` with the manual
//! controls, above the editor) and the editor (service, stable and canary subsets, steps,
//! interval, success criteria, threshold, minimum requests, the mirror stage; webhooks are
//! kept as stored and edited in YAML). The console never moves a canary's weight itself: the
//! controller owns the service's split while a canary runs, and an operator steers it only
//! through the API's pause / resume / promote / abort actions.

use leptos::prelude::*;
use leptos::task::spawn_local;

use quiver_api::resource::AnyResource;

use crate::api::{ApiError, Live, Watched, check_before_save, client, live, split_list};
use crate::canary_view::{CanaryProgress, PhaseBadge, StepBar};
use crate::pb;
use crate::ui::{Ctx, FieldErr, FormState, FormStatus, Link, LiveState, key_of, navigate};

#[component]
pub fn CanariesPage() -> impl IntoView {
    let ctx = Ctx::get();
    let canaries: Live<pb::Canary> = live(ctx.token());
    view! {
        <section>
            <div class="page-head">
                <h1>"Canaries"</h1>
                <p class="sub">"Progressive rollouts from a stable to a canary subset, driven by the control plane's canary controller. Updates live."</p>
                <button type="button" class="primary" disabled=move || !ctx.can_write() on:click=move |_| navigate("/canaries/new")>"New canary"</button>
            </div>
            <LiveState synced=canaries.synced error=canaries.error />
            <Show when=move || canaries.synced.get() && canaries.items.with(Vec::is_empty)>
                <p class="empty">"No canaries yet."</p>
            </Show>
            <Show when=move || canaries.items.with(|c| !c.is_empty())>
                <table class="list">
                    <thead><tr><th>"Canary"</th><th>"Service"</th><th>"Stable → canary"</th><th>"Phase"</th><th>"Steps"</th><th>"Canary weight"</th><th>"Why"</th></tr></thead>
                    <tbody>
                        // The key holds the version: every status write redraws the row.
                        <For
                            each=move || canaries.items.get()
                            key=|c| (key_of(&c.metadata), c.version())
                            children=move |c| {
                                let k = key_of(&c.metadata);
                                let (href, label) = (format!("/canaries/{k}"), k.clone());
                                let spec = c.spec.clone().unwrap_or_default();
                                let status = c.status.clone().unwrap_or_default();
                                let weight = if status.phase.is_empty() {
                                    "not started".to_string()
                                } else {
                                    format!("{}%", status.canary_weight)
                                };
                                view! {
                                    <tr data-canary=k data-phase=status.phase.clone()>
                                        <td><Link href=href>{label}</Link></td>
                                        <td>{spec.service.clone()}</td>
                                        <td>{format!("{} → {}", spec.stable_subset, spec.canary_subset)}</td>
                                        <td><PhaseBadge phase=status.phase.clone() /></td>
                                        <td><StepBar spec=spec.clone() status=status.clone() /><small class="muted">{format!("every {}", spec.interval)}</small></td>
                                        <td class="weight-now">{weight}</td>
                                        <td class="canary-message">{status.message.clone()}</td>
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </Show>
        </section>
    }
}

fn new_canary() -> pb::Canary {
    pb::Canary {
        metadata: Some(pb::ObjectMeta {
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(pb::CanarySpec {
            steps: vec![5, 25, 50, 100],
            interval: "1m".into(),
            success_criteria: Some(pb::SuccessCriteria {
                min_success_rate: 99.0,
                max_p99_latency: "500ms".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[component]
pub fn CanaryEditor(key: Option<(String, String)>) -> impl IntoView {
    let ctx = Ctx::get();
    let creating = key.is_none();
    let draft = RwSignal::new(new_canary());
    let steps_text = RwSignal::new("5, 25, 50, 100".to_string());
    let loaded = RwSignal::new(creating);
    let load_error = RwSignal::new(None::<String>);
    let form = FormState::new();
    form.track_edits(draft);
    let confirm_delete = RwSignal::new(false);
    let services: Live<pb::Service> = live(ctx.token());
    let canaries: Live<pb::Canary> = live(ctx.token());
    // The spec as loaded or last saved: the controller writes the status (a new version) at
    // every check, which must not make a spec edit look like a conflicting one.
    let base_spec = StoredValue::new(None::<pb::CanarySpec>);

    let load = {
        let key = key.clone();
        move || {
            let Some((ns, name)) = key.clone() else {
                return;
            };
            let token = ctx.token();
            spawn_local(async move {
                match client(&token)
                    .get_canary(pb::GetRequest {
                        namespace: ns,
                        name,
                    })
                    .await
                {
                    Ok(c) => {
                        let c = c.into_inner();
                        steps_text.set(
                            c.spec
                                .as_ref()
                                .map(|s| {
                                    s.steps
                                        .iter()
                                        .map(u32::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                })
                                .unwrap_or_default(),
                        );
                        base_spec.set_value(c.spec.clone());
                        draft.set(c);
                        form.error.set(None);
                        loaded.set(true);
                    }
                    Err(s) => load_error.set(Some(ApiError::from_status(&s).summary())),
                }
            });
        }
    };
    load();
    let reload = Callback::new(move |()| load());

    let spec = move || draft.with(|c| c.spec.clone().unwrap_or_default());
    let ns = move || {
        draft.with(|c| {
            c.metadata
                .as_ref()
                .map(|m| m.namespace.clone())
                .unwrap_or_default()
        })
    };
    let edit = move |f: &dyn Fn(&mut pb::CanarySpec)| {
        draft.update(|c| f(c.spec.get_or_insert_with(Default::default)))
    };
    let criteria = move |f: &dyn Fn(&mut pb::SuccessCriteria)| {
        edit(&|s| f(s.success_criteria.get_or_insert_with(Default::default)))
    };
    let subsets = move || {
        let svc = spec().service;
        services
            .get(&ns(), &svc)
            .and_then(|s| s.spec)
            .map(|s| s.subsets.into_iter().map(|x| x.name).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let service_names = move || {
        let ns = ns();
        services.items.with(|s| {
            s.iter()
                .filter_map(|s| s.metadata.as_ref())
                .filter(|m| m.namespace == ns)
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
        })
    };

    let save = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let mut canary = draft.get_untracked();
        // Steps are typed as a list; a bad number is refused here, naming the field.
        let mut steps = Vec::new();
        for (n, s) in split_list(&steps_text.get_untracked()).iter().enumerate() {
            match s.trim_end_matches('%').parse::<u32>() {
                Ok(v) => steps.push(v),
                Err(_) => {
                    form.error.set(Some(ApiError {
                        code: tonic::Code::InvalidArgument,
                        message: "The steps are not a list of numbers.".into(),
                        fields: vec![(
                            format!("spec.steps[{n}]"),
                            format!("{s:?} is not a whole number"),
                        )],
                    }));
                    return;
                }
            }
        }
        canary.spec.get_or_insert_with(Default::default).steps = steps;
        let (cns, cname) = canary
            .metadata
            .as_ref()
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .unwrap_or_default();
        if creating && !canaries.synced.get_untracked() {
            // Without the list, an existing name would be overwritten (Apply without a version).
            form.error.set(Some(ApiError {
                code: tonic::Code::Unavailable,
                message: "The existing canaries are still loading; save again in a moment.".into(),
                fields: Vec::new(),
            }));
            return;
        }
        if !creating
            && let Some(stored) = canaries.get(&cns, &cname)
            && base_spec.with_value(|b| *b == stored.spec)
        {
            // Only the status moved since this form read the spec: save over that version.
            canary
                .metadata
                .get_or_insert_with(Default::default)
                .resource_version = stored.version();
        }
        if creating && canaries.get(&cns, &cname).is_some() {
            form.error.set(Some(ApiError {
                code: tonic::Code::AlreadyExists,
                message: format!("Canary {cns}/{cname} already exists."),
                fields: vec![(
                    "metadata.name".into(),
                    "a canary with this name exists in this namespace; open it to edit".into(),
                )],
            }));
            return;
        }
        // The control plane's own validation, here: its field errors without a round trip.
        if let Err(e) = check_before_save(&AnyResource::Canary(canary.clone()), Some(services)) {
            form.refused(e);
            return;
        }
        form.start();
        let token = ctx.token();
        spawn_local(async move {
            match client(&token).apply_canary(canary).await {
                Ok(resp) => {
                    let saved = resp.into_inner().canary.unwrap_or_default();
                    let v = saved.version();
                    if creating {
                        navigate("/canaries");
                        ctx.flash.set(Some(format!(
                            "Canary {} created (version {v}).",
                            key_of(&saved.metadata)
                        )));
                    } else {
                        base_spec.set_value(saved.spec.clone());
                        draft.set(saved);
                        form.done(Ok(format!("Saved (version {v}).")));
                    }
                }
                Err(s) => form.done(Err(ApiError::from_status(&s))),
            }
        });
    };

    let delete = move |_| {
        let meta = draft.get_untracked().metadata.unwrap_or_default();
        let token = ctx.token();
        form.start();
        spawn_local(async move {
            let req = pb::DeleteRequest {
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                resource_version: meta.resource_version,
            };
            match client(&token).delete_canary(req).await {
                Ok(_) => {
                    navigate("/canaries");
                    ctx.flash.set(Some(format!(
                        "Canary {}/{} deleted.",
                        meta.namespace, meta.name
                    )));
                }
                Err(s) => {
                    confirm_delete.set(false);
                    form.done(Err(ApiError::from_status(&s)));
                }
            }
        });
    };

    let title = match &key {
        Some((ns, name)) => format!("Canary {ns}/{name}"),
        None => "New canary".to_string(),
    };
    let text_input = move |id: &'static str,
                           label: &'static str,
                           path: &'static str,
                           get: fn(&pb::Canary) -> String,
                           set: fn(&mut pb::Canary, String),
                           ro: bool| {
        view! {
            <div class="field">
                <label for=id>{label}</label>
                <input id=id type="text" readonly=ro prop:value=move || draft.with(get) on:input=move |e| draft.update(|c| set(c, event_target_value(&e))) />
                <FieldErr form=form path=path />
            </div>
        }
    };
    view! {
        <section>
            <div class="page-head">
                <h1>{title}</h1>
                <Link href="/canaries">"← All canaries"</Link>
            </div>
            {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
            <Show when=move || loaded.get() fallback=move || view! { <Show when=move || load_error.get().is_none()><p class="loading">"Loading…"</p></Show> }>
                {key.clone().map(|(ns, name)| {
                    let (n, m) = (ns.clone(), name.clone());
                    let current = Signal::derive(move || canaries.get(&n, &m));
                    view! { <CanaryProgress canary=current ns=ns name=name /> }
                })}
                <h2>"Spec"</h2>
                <form class="editor" on:submit=save novalidate>
                    <fieldset disabled=move || !ctx.can_write() || form.saving.get()>
                        <legend class="visually-hidden">"Canary"</legend>
                        <div class="row">
                            {text_input("canary-namespace", "Namespace", "metadata.namespace", |c| c.metadata.as_ref().map(|m| m.namespace.clone()).unwrap_or_default(), |c, v| c.metadata.get_or_insert_with(Default::default).namespace = v, !creating)}
                            {text_input("canary-name", "Name", "metadata.name", |c| c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(), |c, v| c.metadata.get_or_insert_with(Default::default).name = v, !creating)}
                            <div class="field">
                                <label for="canary-service">"Service"</label>
                                <select id="canary-service" on:change=move |e| { let v = event_target_value(&e); edit(&|s| s.service = v.clone()) }>
                                    <option value="" prop:selected=move || spec().service.is_empty()>"Choose a service…"</option>
                                    {move || service_names().into_iter().map(|n| { let v = n.clone(); view! { <option value=n.clone() prop:selected=move || spec().service == v>{n.clone()}</option> } }).collect_view()}
                                </select>
                                <FieldErr form=form path="spec.service" />
                            </div>
                        </div>
                        <div class="row">
                            {[("stable", "Stable subset", "spec.stableSubset"), ("canary", "Canary subset", "spec.canarySubset")].into_iter().map(|(which, label, path)| {
                                let current = move || { let s = spec(); if which == "stable" { s.stable_subset } else { s.canary_subset } };
                                view! {
                                    <div class="field">
                                        <label for=format!("canary-{which}")>{label}</label>
                                        <select id=format!("canary-{which}") on:change=move |e| { let v = event_target_value(&e); edit(&|s| if which == "stable" { s.stable_subset = v.clone() } else { s.canary_subset = v.clone() }) }>
                                            <option value="" prop:selected=move || current().is_empty()>"Choose a subset…"</option>
                                            {move || { let mut n = subsets(); let c = current(); if !c.is_empty() && !n.contains(&c) { n.push(c) } n.into_iter().map(|n| { let v = n.clone(); view! { <option value=n.clone() prop:selected=move || current() == v>{n.clone()}</option> } }).collect_view() }}
                                        </select>
                                        <FieldErr form=form path=path />
                                    </div>
                                }
                            }).collect_view()}
                        </div>
                        <div class="row">
                            <div class="field">
                                <label for="canary-steps">"Steps (canary %, increasing)"</label>
                                <input id="canary-steps" type="text" placeholder="5, 25, 50, 100" prop:value=move || steps_text.get() on:input=move |e| steps_text.set(event_target_value(&e)) />
                                <FieldErr form=form path="spec.steps" />
                            </div>
                            {text_input("canary-interval", "Interval per step", "spec.interval", |c| c.spec.as_ref().map(|s| s.interval.clone()).unwrap_or_default(), |c, v| c.spec.get_or_insert_with(Default::default).interval = v, false)}
                            <div class="field">
                                <label for="canary-success">"Minimum success rate (%)"</label>
                                <input id="canary-success" type="number" min="0" max="100" step="any"
                                    prop:value=move || spec().success_criteria.map(|c| c.min_success_rate.to_string()).unwrap_or_default()
                                    on:input=move |e| { if let Ok(v) = event_target_value(&e).parse::<f64>() { criteria(&|c| c.min_success_rate = v) } } />
                                <FieldErr form=form path="spec.successCriteria.minSuccessRate" />
                            </div>
                            <div class="field">
                                <label for="canary-p99">"Maximum p99 latency"</label>
                                <input id="canary-p99" type="text" placeholder="500ms"
                                    prop:value=move || spec().success_criteria.map(|c| c.max_p99_latency).unwrap_or_default()
                                    on:input=move |e| { let v = event_target_value(&e); criteria(&|c| c.max_p99_latency = v.clone()) } />
                                <FieldErr form=form path="spec.successCriteria.maxP99Latency" />
                            </div>
                        </div>
                        <div class="row">
                            <div class="field">
                                <label for="canary-threshold">"Failed checks before a rollback"</label>
                                <input id="canary-threshold" type="number" min="0" step="1" placeholder="1"
                                    prop:value=move || { let t = spec().threshold; if t == 0 { String::new() } else { t.to_string() } }
                                    on:input=move |e| { let v = event_target_value(&e); if let Ok(n) = if v.is_empty() { Ok(0) } else { v.parse::<u32>() } { edit(&|s| s.threshold = n) } } />
                                <FieldErr form=form path="spec.threshold" />
                            </div>
                            <div class="field">
                                <label for="canary-min-requests">"Minimum requests per check"</label>
                                <input id="canary-min-requests" type="number" min="0" step="1" placeholder="20"
                                    prop:value=move || { let n = spec().min_requests; if n == 0 { String::new() } else { n.to_string() } }
                                    on:input=move |e| { let v = event_target_value(&e); if let Ok(n) = if v.is_empty() { Ok(0) } else { v.parse::<u32>() } { edit(&|s| s.min_requests = n) } } />
                                <FieldErr form=form path="spec.minRequests" />
                            </div>
                            <div class="field">
                                <label for="canary-p50">"Maximum p50 latency"</label>
                                <input id="canary-p50" type="text" placeholder="(not judged)"
                                    prop:value=move || spec().success_criteria.map(|c| c.max_p50_latency).unwrap_or_default()
                                    on:input=move |e| { let v = event_target_value(&e); criteria(&|c| c.max_p50_latency = v.clone()) } />
                                <FieldErr form=form path="spec.successCriteria.maxP50Latency" />
                            </div>
                            <div class="field">
                                <label for="canary-mirror">"Mirror stage first (% of requests copied)"</label>
                                <input id="canary-mirror" type="number" min="0" max="100" step="any" placeholder="0 (none)"
                                    prop:value=move || { let p = spec().mirror_percent; if p == 0.0 { String::new() } else { p.to_string() } }
                                    on:input=move |e| { let v = event_target_value(&e); if let Ok(p) = if v.is_empty() { Ok(0.0) } else { v.parse::<f64>() } { edit(&|s| s.mirror_percent = p) } } />
                                <FieldErr form=form path="spec.mirrorPercent" />
                            </div>
                        </div>
                        <FormStatus form=form reload=reload what="This canary" />
                        <div class="actions">
                            <button type="submit" class="primary" disabled=move || creating && !canaries.synced.get()>{move || if form.saving.get() { "Saving…" } else if creating { "Create canary" } else { "Save changes" }}</button>
                            {(!creating).then(|| view! { <button type="button" class="danger" on:click=move |_| confirm_delete.set(true)>"Delete canary…"</button> })}
                        </div>
                        <Show when=move || confirm_delete.get()>
                            <div class="confirm" role="alertdialog" aria-labelledby="confirm-title">
                                <p id="confirm-title">{move || format!("Delete canary {}? The service's Route as written applies again.", draft.with(|c| key_of(&c.metadata)))}</p>
                                <button type="button" class="danger" on:click=delete>"Delete"</button>
                                <button type="button" on:click=move |_| confirm_delete.set(false)>"Cancel"</button>
                            </div>
                        </Show>
                    </fieldset>
                </form>
            </Show>
        </section>
    }
}
