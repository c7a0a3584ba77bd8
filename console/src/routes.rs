//! Routes: the live list, and the editor (create, edit, delete) for rules with matches,
//! weighted backends (numbers and sliders that keep the sum at 100), timeout, retries and
//! fault injection. The route being edited is one draft `pb::Route`; every input reads and
//! writes its own field of it.

use leptos::prelude::*;
use leptos::task::spawn_local;

use quiver_api::resource::AnyResource;

use crate::api::{ApiError, Live, Watched, check, check_before_save, client, live};
use crate::pb;
use crate::ui::{
    Ctx, FieldErr, FormState, FormStatus, Link, ListInput, LiveState, key_of, navigate,
};

#[component]
pub fn RoutesPage() -> impl IntoView {
    let ctx = Ctx::get();
    let routes: Live<pb::Route> = live(ctx.token());
    view! {
        <section>
            <div class="page-head">
                <h1>"Routes"</h1>
                <p class="sub">"How requests to each service are split and shaped. Updates live."</p>
                <button type="button" class="primary" disabled=move || !ctx.can_write() on:click=move |_| navigate("/routes/new")>
                    "New route"
                </button>
            </div>
            <LiveState synced=routes.synced error=routes.error />
            <Show when=move || routes.synced.get() && routes.items.with(Vec::is_empty)>
                <p class="empty">"No routes yet."</p>
            </Show>
            <Show when=move || routes.items.with(|r| !r.is_empty())>
                <table class="list">
                    <thead><tr><th>"Route"</th><th>"Service"</th><th>"Rules"</th><th>"Version"</th></tr></thead>
                    <tbody>
                        <For
                            each=move || routes.items.get()
                            key=|r| (key_of(&r.metadata), r.version())
                            children=move |r| {
                                let k = key_of(&r.metadata);
                                let (href, label) = (format!("/routes/{k}"), k.clone());
                                let spec = r.spec.clone().unwrap_or_default();
                                view! {
                                    <tr data-route=k>
                                        <td><Link href=href>{label}</Link></td>
                                        <td>{spec.service.clone()}</td>
                                        <td><ul class="rules">{spec.rules.iter().map(|rule| view! { <li>{rule_summary(rule)}</li> }).collect_view()}</ul></td>
                                        <td>{r.version()}</td>
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

/// "default: /api* → v1 80% · v2 20% · timeout 2s · 3 attempts".
pub fn rule_summary(rule: &pb::RouteRule) -> String {
    let mut s = format!("{}: ", rule.name);
    if let Some(m) = &rule.r#match {
        let mut conds = Vec::new();
        if let Some(p) = &m.path {
            if !p.exact.is_empty() {
                conds.push(format!("path = {}", p.exact));
            } else if !p.prefix.is_empty() {
                conds.push(format!("path {}*", p.prefix));
            } else if !p.regex.is_empty() {
                conds.push(format!("path ~ {}", p.regex));
            }
        }
        if !m.methods.is_empty() {
            conds.push(m.methods.join("|"));
        }
        if !m.headers.is_empty() {
            conds.push(format!("{} header conditions", m.headers.len()));
        }
        if !conds.is_empty() {
            s.push_str(&conds.join(", "));
            s.push_str(" → ");
        }
    }
    let backends: Vec<String> = rule
        .backends
        .iter()
        .map(|b| {
            let target = match (b.service.as_str(), b.subset.as_str()) {
                ("", "") => "all".to_string(),
                ("", sub) => sub.to_string(),
                (svc, "") => svc.to_string(),
                (svc, sub) => format!("{svc}/{sub}"),
            };
            format!("{target} {}%", b.weight)
        })
        .collect();
    s.push_str(&backends.join(" · "));
    if !rule.timeout.is_empty() {
        s.push_str(&format!(" · timeout {}", rule.timeout));
    }
    if let Some(r) = &rule.retries {
        s.push_str(&format!(" · {} attempts", r.attempts));
    }
    if rule.fault.is_some() {
        s.push_str(" · fault injection");
    }
    s
}

fn new_route() -> pb::Route {
    pb::Route {
        metadata: Some(pb::ObjectMeta {
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(pb::RouteSpec {
            service: String::new(),
            rules: vec![new_rule("default")],
        }),
    }
}

fn new_rule(name: &str) -> pb::RouteRule {
    pb::RouteRule {
        name: name.into(),
        backends: vec![pb::WeightedBackend {
            weight: 100,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Set backend `j` to `w` and spread the rest over the others in proportion to their
/// current weights, so the sum stays 100 (the slider's behaviour).
pub fn set_weight_balanced(backends: &mut [pb::WeightedBackend], j: usize, w: u32) {
    let w = w.min(100);
    let Some(b) = backends.get_mut(j) else { return };
    b.weight = w;
    let others: Vec<usize> = (0..backends.len()).filter(|&k| k != j).collect();
    if others.is_empty() {
        return;
    }
    let rest = 100 - w;
    let total: u64 = others.iter().map(|&k| u64::from(backends[k].weight)).sum();
    let mut assigned = 0;
    for (n, &k) in others.iter().enumerate() {
        let share = if n + 1 == others.len() {
            rest - assigned
        } else {
            (u64::from(backends[k].weight) * u64::from(rest))
                .checked_div(total)
                .map_or(rest / others.len() as u32, |s| s as u32)
        };
        backends[k].weight = share;
        assigned += share;
    }
}

fn spec_mut(r: &mut pb::Route) -> &mut pb::RouteSpec {
    r.spec.get_or_insert_with(Default::default)
}

fn meta_mut(r: &mut pb::Route) -> &mut pb::ObjectMeta {
    r.metadata.get_or_insert_with(Default::default)
}

/// Read or write rule `i` of the draft.
#[derive(Clone, Copy)]
struct Draft(RwSignal<pb::Route>);

impl Draft {
    fn read<T>(&self, i: usize, f: impl FnOnce(&pb::RouteRule) -> T) -> Option<T> {
        self.0
            .with(|r| r.spec.as_ref().and_then(|s| s.rules.get(i)).map(f))
    }
    fn write(&self, i: usize, f: impl FnOnce(&mut pb::RouteRule)) {
        self.0.update(|r| {
            if let Some(rule) = spec_mut(r).rules.get_mut(i) {
                f(rule)
            }
        })
    }
    fn text(
        self,
        i: usize,
        get: fn(&pb::RouteRule) -> String,
    ) -> impl Fn() -> String + Copy + Send + Sync + 'static {
        move || self.read(i, get).unwrap_or_default()
    }
}

#[component]
pub fn RouteEditor(key: Option<(String, String)>) -> impl IntoView {
    let ctx = Ctx::get();
    let creating = key.is_none();
    let draft = RwSignal::new(new_route());
    let loaded = RwSignal::new(creating);
    let load_error = RwSignal::new(None::<String>);
    let form = FormState::new();
    form.track_edits(draft);
    let confirm_delete = RwSignal::new(false);
    let services: Live<pb::Service> = live(ctx.token());
    let routes: Live<pb::Route> = live(ctx.token());

    let load = {
        let key = key.clone();
        move || {
            let Some((ns, name)) = key.clone() else {
                return;
            };
            let token = ctx.token();
            spawn_local(async move {
                let req = pb::GetRequest {
                    namespace: ns,
                    name,
                };
                match client(&token).get_route(req).await {
                    Ok(r) => {
                        draft.set(r.into_inner());
                        form.error.set(None);
                        form.notice.set(None);
                        loaded.set(true);
                    }
                    Err(s) => load_error.set(Some(ApiError::from_status(&s).summary())),
                }
            });
        }
    };
    load();
    let reload = Callback::new({
        let load = load.clone();
        move |()| load()
    });

    // Someone else saved (or deleted) this route after it was opened.
    let stale = {
        let key = key.clone();
        move || {
            let (ns, name) = key.clone()?;
            if !loaded.get() || !routes.synced.get() {
                return None;
            }
            let mine = draft.with(|d| d.version());
            match routes.get(&ns, &name) {
                Some(stored) if stored.version() > mine => Some(format!(
                    "This route changed since you opened it (now version {}, you have {mine}).",
                    stored.version()
                )),
                None => Some("This route was deleted since you opened it.".to_string()),
                _ => None,
            }
        }
    };

    let save = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let route = draft.get_untracked();
        let (ns, name) = route
            .metadata
            .as_ref()
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .unwrap_or_default();
        if creating && !routes.synced.get_untracked() {
            // Without the list, an existing name would be overwritten (Apply without a version).
            form.error.set(Some(ApiError {
                code: tonic::Code::Unavailable,
                message: "The existing routes are still loading; save again in a moment.".into(),
                fields: Vec::new(),
            }));
            return;
        }
        if creating && routes.get(&ns, &name).is_some() {
            form.error.set(Some(ApiError {
                code: tonic::Code::AlreadyExists,
                message: format!("Route {ns}/{name} already exists."),
                fields: vec![(
                    "metadata.name".into(),
                    "a route with this name exists in this namespace; open it to edit".into(),
                )],
            }));
            return;
        }
        // The control plane's own validation, here: its field errors without a round trip.
        if let Err(e) = check_before_save(&AnyResource::Route(route.clone()), Some(services)) {
            form.refused(e);
            return;
        }
        form.start();
        let token = ctx.token();
        spawn_local(async move {
            let result = client(&token).apply_route(route).await;
            match result {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let outcome = resp.outcome();
                    let saved = resp.route.unwrap_or_default();
                    let version = saved.version();
                    let k = key_of(&saved.metadata);
                    if creating {
                        navigate("/routes");
                        ctx.flash
                            .set(Some(format!("Route {k} created (version {version}).")));
                    } else {
                        draft.set(saved);
                        let what = match outcome {
                            pb::ApplyOutcome::Unchanged => "Nothing to save: no changes",
                            _ => "Saved",
                        };
                        form.done(Ok(format!("{what} (version {version}).")));
                    }
                }
                Err(s) => form.done(Err(ApiError::from_status(&s))),
            }
        });
    };

    let delete = move |_| {
        let route = draft.get_untracked();
        let meta = route.metadata.unwrap_or_default();
        let token = ctx.token();
        form.start();
        spawn_local(async move {
            let req = pb::DeleteRequest {
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                resource_version: meta.resource_version,
            };
            match client(&token).delete_route(req).await {
                Ok(_) => {
                    navigate("/routes");
                    ctx.flash.set(Some(format!(
                        "Route {}/{} deleted.",
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
        Some((ns, name)) => format!("Route {ns}/{name}"),
        None => "New route".to_string(),
    };
    let ns_value = Signal::derive(move || {
        draft.with(|r| {
            key_of(&r.metadata)
                .split('/')
                .next()
                .unwrap_or("")
                .to_string()
        })
    });
    let name_value = Signal::derive(move || {
        draft.with(|r| {
            r.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default()
        })
    });
    let service_value = move || {
        draft.with(|r| {
            r.spec
                .as_ref()
                .map(|s| s.service.clone())
                .unwrap_or_default()
        })
    };
    let rule_count =
        Memo::new(move |_| draft.with(|r| r.spec.as_ref().map_or(0, |s| s.rules.len())));
    let service_names = move || {
        let ns = ns_value.get();
        services.items.with(|s| {
            s.iter()
                .filter_map(|s| s.metadata.as_ref())
                .filter(|m| m.namespace == ns)
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
        })
    };

    view! {
        <section>
            <div class="page-head">
                <h1>{title}</h1>
                <Link href="/routes">"← All routes"</Link>
            </div>
            {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
            <Show when=move || loaded.get() fallback=move || view! { <Show when=move || load_error.get().is_none()><p class="loading">"Loading…"</p></Show> }>
                <form class="editor" on:submit=save novalidate>
                    <fieldset disabled=move || !ctx.can_write() || form.saving.get()>
                        <legend class="visually-hidden">"Route"</legend>
                        <div class="row">
                            <div class="field">
                                <label for="route-namespace">"Namespace"</label>
                                <input id="route-namespace" type="text" prop:value=move || ns_value.get() readonly=!creating
                                    on:input=move |e| draft.update(|r| meta_mut(r).namespace = event_target_value(&e)) />
                                <FieldErr form=form path="metadata.namespace" />
                            </div>
                            <div class="field">
                                <label for="route-name">"Name"</label>
                                <input id="route-name" type="text" prop:value=move || name_value.get() readonly=!creating
                                    on:input=move |e| draft.update(|r| meta_mut(r).name = event_target_value(&e)) />
                                <FieldErr form=form path="metadata.name" />
                            </div>
                            <div class="field">
                                <label for="route-service">"Service"</label>
                                <select id="route-service" on:change=move |e| draft.update(|r| spec_mut(r).service = event_target_value(&e))>
                                    <option value="" prop:selected=move || service_value().is_empty()>"Choose a service…"</option>
                                    {move || service_names().into_iter().map(|n| {
                                        let v = n.clone();
                                        view! { <option value=n.clone() prop:selected=move || service_value() == v>{n.clone()}</option> }
                                    }).collect_view()}
                                </select>
                                <FieldErr form=form path="spec.service" />
                            </div>
                        </div>
                        <h2>"Rules" <small>" (the first rule that matches a request handles it)"</small></h2>
                        <FieldErr form=form path="spec.rules" />
                        {move || (0..rule_count.get()).map(|i| view! { <RuleEditor i=i draft=Draft(draft) form=form services=services /> }).collect_view()}
                        <button type="button" on:click=move |_| draft.update(|r| {
                            let n = spec_mut(r).rules.len();
                            spec_mut(r).rules.push(new_rule(&format!("rule-{}", n + 1)));
                        })>"Add rule"</button>
                        <FormStatus form=form reload=reload what="This route" />
                        <div class="actions">
                            <button type="submit" class="primary" disabled=move || creating && !routes.synced.get()>{move || if form.saving.get() { "Saving…" } else if creating { "Create route" } else { "Save changes" }}</button>
                            {(!creating).then(|| view! {
                                <button type="button" class="danger" on:click=move |_| confirm_delete.set(true)>"Delete route…"</button>
                            })}
                        </div>
                        {
                            let stale = stale.clone();
                            move || stale().filter(|_| !form.saving.get()).map(|s| view! {
                                <div class="banner conflict" role="status">
                                    <strong>{s}</strong>" Saving now would be refused. "
                                    <button type="button" on:click=move |_| reload.run(())>"Reload the current version"</button>
                                </div>
                            })
                        }
                        <Show when=move || confirm_delete.get()>
                            <div class="confirm" role="alertdialog" aria-labelledby="confirm-title">
                                <p id="confirm-title">{move || format!("Delete route {}? Proxies stop using it at once.", draft.with(|r| key_of(&r.metadata)))}</p>
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

#[component]
fn RuleEditor(
    i: usize,
    draft: Draft,
    form: FormState,
    services: Live<pb::Service>,
) -> impl IntoView {
    let p = format!("spec.rules[{i}]");
    let id = move |s: &str| format!("r{i}-{s}");
    let (p_headers, p_retries, p_delay, p_abort) = (p.clone(), p.clone(), p.clone(), p.clone());
    let backend_count = Memo::new(move |_| draft.read(i, |r| r.backends.len()).unwrap_or(0));
    let header_count = Memo::new(move |_| {
        draft
            .read(i, |r| r.r#match.as_ref().map_or(0, |m| m.headers.len()))
            .unwrap_or(0)
    });
    let sum = move || {
        draft
            .read(i, |r| r.backends.iter().map(|b| b.weight).sum::<u32>())
            .unwrap_or(0)
    };
    // The policy compiler's verdict on this rule's backends, live as the weights move: the
    // very words an Apply would answer.
    let p_backends = format!("{p}.backends");
    let sum_error = Signal::derive(move || {
        let route = draft.0.get();
        let refused = services
            .items
            .with(|items| check(&AnyResource::Route(route), items))
            .err()?;
        refused
            .fields
            .into_iter()
            .find(|(path, _)| *path == p_backends)
            .map(|(_, reason)| reason)
    });
    let path_kind = move || {
        draft
            .read(i, |r| {
                match r.r#match.as_ref().and_then(|m| m.path.as_ref()) {
                    Some(p) if !p.exact.is_empty() => "exact",
                    Some(p) if !p.regex.is_empty() => "regex",
                    Some(p) if !p.prefix.is_empty() => "prefix",
                    Some(_) => "prefix",
                    None => "any",
                }
            })
            .unwrap_or("any")
    };
    let path_value = draft.text(i, |r| {
        r.r#match
            .as_ref()
            .and_then(|m| m.path.as_ref())
            .map(|p| format!("{}{}{}", p.exact, p.prefix, p.regex))
            .unwrap_or_default()
    });
    let set_path = move |kind: &str, value: String| {
        draft.write(i, |r| {
            let m = r.r#match.get_or_insert_with(Default::default);
            m.path = match kind {
                "exact" => Some(pb::PathMatch {
                    exact: value,
                    ..Default::default()
                }),
                "prefix" => Some(pb::PathMatch {
                    prefix: if value.is_empty() { "/".into() } else { value },
                    ..Default::default()
                }),
                "regex" => Some(pb::PathMatch {
                    regex: value,
                    ..Default::default()
                }),
                _ => None,
            };
        })
    };
    let has_retries = move || draft.read(i, |r| r.retries.is_some()).unwrap_or(false);
    let has_delay = move || {
        draft
            .read(i, |r| r.fault.as_ref().is_some_and(|f| f.delay.is_some()))
            .unwrap_or(false)
    };
    let has_abort = move || {
        draft
            .read(i, |r| r.fault.as_ref().is_some_and(|f| f.abort.is_some()))
            .unwrap_or(false)
    };
    let num = |e: &leptos::ev::Event| event_target_value(e).trim().parse::<f64>().ok();

    view! {
        <fieldset class="rule" aria-label=format!("Rule {}", i + 1)>
            <legend>{move || format!("Rule {}: {}", i + 1, draft.read(i, |r| r.name.clone()).unwrap_or_default())}</legend>
            <div class="row">
                <div class="field">
                    <label for=id("name")>"Rule name"</label>
                    <input id=id("name") type="text" prop:value=draft.text(i, |r| r.name.clone())
                        on:input=move |e| draft.write(i, |r| r.name = event_target_value(&e)) />
                    <FieldErr form=form path=format!("{p}.name") />
                </div>
                <div class="field">
                    <label for=id("path-kind")>"Path"</label>
                    <select id=id("path-kind") on:change=move |e| set_path(&event_target_value(&e), path_value())>
                        {["any", "prefix", "exact", "regex"].into_iter().map(|k| view! {
                            <option value=k prop:selected=move || path_kind() == k>{match k { "any" => "any path", "prefix" => "starts with", "exact" => "is exactly", _ => "matches regex" }}</option>
                        }).collect_view()}
                    </select>
                </div>
                <div class="field">
                    <label for=id("path")>"Path value"</label>
                    <input id=id("path") type="text" placeholder="/api/" prop:value=path_value disabled=move || path_kind() == "any"
                        on:input=move |e| set_path(path_kind(), event_target_value(&e)) />
                    <FieldErr form=form path=format!("{p}.match.path") />
                    <FieldErr form=form path=format!("{p}.match.path.exact") />
                    <FieldErr form=form path=format!("{p}.match.path.prefix") />
                    <FieldErr form=form path=format!("{p}.match.path.regex") />
                </div>
                <div class="field">
                    <label for=id("methods")>"Methods"</label>
                    <ListInput id=id("methods") placeholder="GET, HEAD (empty: any)"
                        value=Signal::derive(move || draft.read(i, |r| r.r#match.as_ref().map(|m| m.methods.clone()).unwrap_or_default()).unwrap_or_default())
                        set=move |v| draft.write(i, |r| r.r#match.get_or_insert_with(Default::default).methods = v) />
                    <FieldErr form=form path=format!("{p}.match.methods") />
                </div>
            </div>
            <div class="sub-list">
                <h3>"Header conditions"</h3>
                {move || (0..header_count.get()).map(|h| {
                    let hp = format!("{p_headers}.match.headers[{h}]");
                    let get = move |f: fn(&pb::HeaderMatch) -> String| move || draft.read(i, |r| r.r#match.as_ref().and_then(|m| m.headers.get(h)).map(f).unwrap_or_default()).unwrap_or_default();
                    let set = move |f: fn(&mut pb::HeaderMatch, String), v: String| draft.write(i, |r| if let Some(x) = r.r#match.as_mut().and_then(|m| m.headers.get_mut(h)) { f(x, v) });
                    let kind = move || draft.read(i, |r| r.r#match.as_ref().and_then(|m| m.headers.get(h)).map(|x| if x.present { "present" } else if !x.regex.is_empty() { "regex" } else { "exact" }).unwrap_or("exact")).unwrap_or("exact");
                    view! {
                        <div class="row">
                            <div class="field">
                                <label for=format!("r{i}-h{h}-name")>"Header"</label>
                                <input id=format!("r{i}-h{h}-name") type="text" prop:value=get(|x| x.name.clone()) on:input=move |e| set(|x, v| x.name = v, event_target_value(&e)) />
                                <FieldErr form=form path=format!("{hp}.name") />
                            </div>
                            <div class="field">
                                <label for=format!("r{i}-h{h}-kind")>"Condition"</label>
                                <select id=format!("r{i}-h{h}-kind") on:change=move |e| {
                                    let k = event_target_value(&e);
                                    draft.write(i, |r| if let Some(x) = r.r#match.as_mut().and_then(|m| m.headers.get_mut(h)) {
                                        let v = format!("{}{}", x.exact, x.regex);
                                        x.present = k == "present";
                                        x.exact = if k == "exact" { v.clone() } else { String::new() };
                                        x.regex = if k == "regex" { v } else { String::new() };
                                    })
                                }>
                                    <option value="exact" prop:selected=move || kind() == "exact">"equals"</option>
                                    <option value="regex" prop:selected=move || kind() == "regex">"matches regex"</option>
                                    <option value="present" prop:selected=move || kind() == "present">"is present"</option>
                                </select>
                            </div>
                            <div class="field">
                                <label for=format!("r{i}-h{h}-value")>"Value"</label>
                                <input id=format!("r{i}-h{h}-value") type="text" disabled=move || kind() == "present"
                                    prop:value=get(|x| format!("{}{}", x.exact, x.regex))
                                    on:input=move |e| { let k = kind(); let v = event_target_value(&e); draft.write(i, |r| if let Some(x) = r.r#match.as_mut().and_then(|m| m.headers.get_mut(h)) { if k == "regex" { x.regex = v } else { x.exact = v } }) } />
                                <FieldErr form=form path=format!("{hp}.exact") />
                                <FieldErr form=form path=format!("{hp}.regex") />
                                <FieldErr form=form path=hp.clone() />
                            </div>
                            <button type="button" class="remove" aria-label=format!("Remove header condition {}", h + 1)
                                on:click=move |_| draft.write(i, |r| if let Some(m) = r.r#match.as_mut() && h < m.headers.len() { m.headers.remove(h); })>"Remove"</button>
                        </div>
                    }
                }).collect_view()}
                <button type="button" on:click=move |_| draft.write(i, |r| r.r#match.get_or_insert_with(Default::default).headers.push(pb::HeaderMatch::default()))>"Add header condition"</button>
            </div>
            <div class="sub-list backends">
                <h3>"Backends" <small>{move || format!(" — total {}%", sum())}</small></h3>
                <FieldErr form=form path=format!("{p}.backends") extra=sum_error />
                {move || (0..backend_count.get()).map(|j| view! { <BackendRow i=i j=j draft=draft form=form services=services /> }).collect_view()}
                <button type="button" on:click=move |_| draft.write(i, |r| r.backends.push(pb::WeightedBackend::default()))>"Add backend"</button>
            </div>
            <div class="row">
                <div class="field">
                    <label for=id("timeout")>"Timeout"</label>
                    <input id=id("timeout") type="text" placeholder="e.g. 2s (empty: mesh default)" prop:value=draft.text(i, |r| r.timeout.clone())
                        on:input=move |e| draft.write(i, |r| r.timeout = event_target_value(&e)) />
                    <FieldErr form=form path=format!("{p}.timeout") />
                </div>
            </div>
            <div class="toggle">
                <input id=id("retries-on") type="checkbox" prop:checked=has_retries
                    on:change=move |e| { let on = event_target_checked(&e); draft.write(i, |r| r.retries = on.then(|| pb::Retries { attempts: 3, retry_on: vec!["5xx".into(), "connect-failure".into()], ..Default::default() })) } />
                <label for=id("retries-on")>"Retries"</label>
            </div>
            <Show when=has_retries>
                <div class="row indent">
                    <div class="field">
                        <label for=id("attempts")>"Attempts (including the first)"</label>
                        <input id=id("attempts") type="number" min="1" max="10" prop:value=draft.text(i, |r| r.retries.as_ref().map(|x| x.attempts.to_string()).unwrap_or_default())
                            on:input=move |e| { if let Some(v) = num(&e) { draft.write(i, |r| if let Some(x) = r.retries.as_mut() { x.attempts = v as u32 }) } } />
                        <FieldErr form=form path=format!("{p_retries}.retries.attempts") />
                    </div>
                    <div class="field">
                        <label for=id("per-try")>"Per-try timeout"</label>
                        <input id=id("per-try") type="text" placeholder="e.g. 500ms" prop:value=draft.text(i, |r| r.retries.as_ref().map(|x| x.per_try_timeout.clone()).unwrap_or_default())
                            on:input=move |e| draft.write(i, |r| if let Some(x) = r.retries.as_mut() { x.per_try_timeout = event_target_value(&e) }) />
                        <FieldErr form=form path=format!("{p_retries}.retries.perTryTimeout") />
                    </div>
                    <div class="field">
                        <label for=id("retry-on")>"Retry on"</label>
                        <ListInput id=id("retry-on") placeholder="5xx, connect-failure"
                            value=Signal::derive(move || draft.read(i, |r| r.retries.as_ref().map(|x| x.retry_on.clone()).unwrap_or_default()).unwrap_or_default())
                            set=move |v| draft.write(i, |r| if let Some(x) = r.retries.as_mut() { x.retry_on = v }) />
                        <FieldErr form=form path=format!("{p_retries}.retries.retryOn") />
                    </div>
                    <div class="field">
                        <label for=id("budget")>"Retry budget (% extra load, 0 = 20)"</label>
                        <input id=id("budget") type="number" min="0" max="100" step="any" prop:value=draft.text(i, |r| r.retries.as_ref().map(|x| x.budget_percent.to_string()).unwrap_or_default())
                            on:input=move |e| { if let Some(v) = num(&e) { draft.write(i, |r| if let Some(x) = r.retries.as_mut() { x.budget_percent = v }) } } />
                        <FieldErr form=form path=format!("{p_retries}.retries.budgetPercent") />
                    </div>
                </div>
            </Show>
            <div class="toggle">
                <input id=id("delay-on") type="checkbox" prop:checked=has_delay
                    on:change=move |e| { let on = event_target_checked(&e); draft.write(i, |r| { let f = r.fault.get_or_insert_with(Default::default); f.delay = on.then(|| pb::FaultDelay { fixed_delay: "100ms".into(), percent: 10.0 }); if f.delay.is_none() && f.abort.is_none() { r.fault = None } }) } />
                <label for=id("delay-on")>"Fault injection: delay"</label>
            </div>
            <Show when=has_delay>
                <div class="row indent">
                    <div class="field">
                        <label for=id("delay")>"Added delay"</label>
                        <input id=id("delay") type="text" prop:value=draft.text(i, |r| r.fault.as_ref().and_then(|f| f.delay.as_ref()).map(|d| d.fixed_delay.clone()).unwrap_or_default())
                            on:input=move |e| draft.write(i, |r| if let Some(d) = r.fault.as_mut().and_then(|f| f.delay.as_mut()) { d.fixed_delay = event_target_value(&e) }) />
                        <FieldErr form=form path=format!("{p_delay}.fault.delay.fixedDelay") />
                    </div>
                    <div class="field">
                        <label for=id("delay-pct")>"Share of requests delayed (%)"</label>
                        <input id=id("delay-pct") type="number" min="0" max="100" step="any" prop:value=draft.text(i, |r| r.fault.as_ref().and_then(|f| f.delay.as_ref()).map(|d| d.percent.to_string()).unwrap_or_default())
                            on:input=move |e| { if let Some(v) = num(&e) { draft.write(i, |r| if let Some(d) = r.fault.as_mut().and_then(|f| f.delay.as_mut()) { d.percent = v }) } } />
                        <FieldErr form=form path=format!("{p_delay}.fault.delay.percent") />
                    </div>
                </div>
            </Show>
            <div class="toggle">
                <input id=id("abort-on") type="checkbox" prop:checked=has_abort
                    on:change=move |e| { let on = event_target_checked(&e); draft.write(i, |r| { let f = r.fault.get_or_insert_with(Default::default); f.abort = on.then_some(pb::FaultAbort { http_status: 503, percent: 10.0 }); if f.delay.is_none() && f.abort.is_none() { r.fault = None } }) } />
                <label for=id("abort-on")>"Fault injection: abort"</label>
            </div>
            <Show when=has_abort>
                <div class="row indent">
                    <div class="field">
                        <label for=id("abort-status")>"HTTP status to answer"</label>
                        <input id=id("abort-status") type="number" min="200" max="599" prop:value=draft.text(i, |r| r.fault.as_ref().and_then(|f| f.abort.as_ref()).map(|a| a.http_status.to_string()).unwrap_or_default())
                            on:input=move |e| { if let Some(v) = num(&e) { draft.write(i, |r| if let Some(a) = r.fault.as_mut().and_then(|f| f.abort.as_mut()) { a.http_status = v as u32 }) } } />
                        <FieldErr form=form path=format!("{p_abort}.fault.abort.httpStatus") />
                    </div>
                    <div class="field">
                        <label for=id("abort-pct")>"Share of requests aborted (%)"</label>
                        <input id=id("abort-pct") type="number" min="0" max="100" step="any" prop:value=draft.text(i, |r| r.fault.as_ref().and_then(|f| f.abort.as_ref()).map(|a| a.percent.to_string()).unwrap_or_default())
                            on:input=move |e| { if let Some(v) = num(&e) { draft.write(i, |r| if let Some(a) = r.fault.as_mut().and_then(|f| f.abort.as_mut()) { a.percent = v }) } } />
                        <FieldErr form=form path=format!("{p_abort}.fault.abort.percent") />
                    </div>
                </div>
            </Show>
            {move || draft.read(i, |r| r.mirror.clone()).flatten().map(|m| view! {
                <p class="hint">{format!("Mirror: {}% of requests copied to {}{} (kept as is; edit it with quiverctl).", m.percent, if m.service.is_empty() { "this service".to_string() } else { m.service.clone() }, if m.subset.is_empty() { String::new() } else { format!("/{}", m.subset) })}</p>
            })}
            <button type="button" class="remove" on:click=move |_| draft.0.update(|r| { let rules = &mut spec_mut(r).rules; if i < rules.len() { rules.remove(i); } })>
                {format!("Remove rule {}", i + 1)}
            </button>
        </fieldset>
    }
}

#[component]
fn BackendRow(
    i: usize,
    j: usize,
    draft: Draft,
    form: FormState,
    services: Live<pb::Service>,
) -> impl IntoView {
    let bp = format!("spec.rules[{i}].backends[{j}]");
    let get = move |f: fn(&pb::WeightedBackend) -> String| {
        move || {
            draft
                .read(i, |r| r.backends.get(j).map(f).unwrap_or_default())
                .unwrap_or_default()
        }
    };
    let set = move |f: fn(&mut pb::WeightedBackend, String), v: String| {
        draft.write(i, |r| {
            if let Some(b) = r.backends.get_mut(j) {
                f(b, v)
            }
        })
    };
    let weight = get(|b| b.weight.to_string());
    let route_service = move || {
        draft.0.with(|r| {
            r.spec
                .as_ref()
                .map(|s| s.service.clone())
                .unwrap_or_default()
        })
    };
    let route_ns = move || {
        draft.0.with(|r| {
            r.metadata
                .as_ref()
                .map(|m| m.namespace.clone())
                .unwrap_or_default()
        })
    };
    let target = get(|b| b.service.clone());
    let subset = get(|b| b.subset.clone());
    let service_names = move || {
        let ns = route_ns();
        services.items.with(|s| {
            s.iter()
                .filter_map(|s| s.metadata.as_ref())
                .filter(|m| m.namespace == ns)
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
        })
    };
    let subsets = move || {
        let ns = route_ns();
        let svc = if target().is_empty() {
            route_service()
        } else {
            target()
        };
        services
            .get(&ns, &svc)
            .and_then(|s| s.spec)
            .map(|s| s.subsets.into_iter().map(|x| x.name).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let label = format!("backend {} of rule {}", j + 1, i + 1);
    view! {
        <div class="row backend" data-backend=format!("{i}-{j}")>
            <div class="field">
                <label for=format!("r{i}-b{j}-service")>"Service"</label>
                <select id=format!("r{i}-b{j}-service") on:change=move |e| set(|b, v| b.service = v, event_target_value(&e))>
                    <option value="" prop:selected=move || target().is_empty()>"this route's service"</option>
                    {move || service_names().into_iter().map(|n| { let v = n.clone(); view! { <option value=n.clone() prop:selected=move || target() == v>{n.clone()}</option> } }).collect_view()}
                </select>
                <FieldErr form=form path=format!("{bp}.service") />
            </div>
            <div class="field">
                <label for=format!("r{i}-b{j}-subset")>"Subset"</label>
                <select id=format!("r{i}-b{j}-subset") on:change=move |e| set(|b, v| b.subset = v, event_target_value(&e))>
                    <option value="" prop:selected=move || subset().is_empty()>"all workloads"</option>
                    {move || {
                        let mut names = subsets();
                        let cur = subset();
                        // Keep a stored subset selectable even when the service no longer has it:
                        // the API will say what is wrong with it.
                        if !cur.is_empty() && !names.contains(&cur) { names.push(cur); }
                        names.into_iter().map(|n| { let v = n.clone(); view! { <option value=n.clone() prop:selected=move || subset() == v>{n.clone()}</option> } }).collect_view()
                    }}
                </select>
                <FieldErr form=form path=format!("{bp}.subset") />
            </div>
            <div class="field weight">
                <label for=format!("r{i}-b{j}-weight")>"Weight (%)"</label>
                <div class="weight-inputs">
                    <input id=format!("r{i}-b{j}-weight") class="weight-number" type="number" min="0" max="100" prop:value=weight
                        on:input=move |e| { if let Ok(v) = event_target_value(&e).trim().parse::<u32>() { draft.write(i, |r| if let Some(b) = r.backends.get_mut(j) { b.weight = v }) } } />
                    <input type="range" class="weight-slider" min="0" max="100" aria-label=format!("Weight slider for {label}") prop:value=weight
                        on:input=move |e| { if let Ok(v) = event_target_value(&e).parse::<u32>() { draft.write(i, |r| set_weight_balanced(&mut r.backends, j, v)) } } />
                </div>
                <FieldErr form=form path=format!("{bp}.weight") />
            </div>
            <button type="button" class="remove" aria-label=format!("Remove {label}")
                on:click=move |_| draft.write(i, |r| if j < r.backends.len() { r.backends.remove(j); })>"Remove"</button>
        </div>
    }
}
