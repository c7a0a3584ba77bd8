//! Authorization policies (list, create, edit, delete) and the mesh settings (MeshConfig
//! `default/mesh`: default allow/deny, default timeout, certificate lifetime), all live.

use leptos::prelude::*;
use leptos::task::spawn_local;

use quiver_api::resource::AnyResource;

use crate::api::{ApiError, Live, Watched, check_before_save, client, live};
use crate::pb;
use crate::ui::{
    Ctx, FieldErr, FormState, FormStatus, Link, ListInput, LiveState, key_of, navigate,
};

fn rule_summary(r: &pb::AuthorizationRule) -> String {
    let any = |v: &[String], what: &str| {
        if v.is_empty() {
            format!("any {what}")
        } else {
            v.join(", ")
        }
    };
    format!(
        "{} · {} · {}",
        any(&r.sources, "source"),
        any(&r.methods, "method"),
        any(&r.paths, "path")
    )
}

#[component]
pub fn PoliciesPage() -> impl IntoView {
    let ctx = Ctx::get();
    let policies: Live<pb::AuthorizationPolicy> = live(ctx.token());
    let mesh: Live<pb::MeshConfig> = live(ctx.token());
    let default_policy = move || {
        mesh.get("default", "mesh")
            .and_then(|m| m.spec)
            .map(|s| s.default_policy)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "ALLOW".into())
    };
    view! {
        <section>
            <div class="page-head">
                <h1>"Authorization policies"</h1>
                <p class="sub">
                    "Who may call each service. Deny rules win; with allow rules, a request must match one. Requests no policy speaks about are "
                    <strong class="default-policy">{default_policy}</strong>" ("<Link href="/mesh">"mesh settings"</Link>")."
                </p>
                <button type="button" class="primary" disabled=move || !ctx.can_write() on:click=move |_| navigate("/policies/new")>"New policy"</button>
            </div>
            <LiveState synced=policies.synced error=policies.error />
            <Show when=move || policies.synced.get() && policies.items.with(Vec::is_empty)>
                <p class="empty">"No authorization policies yet."</p>
            </Show>
            <Show when=move || policies.items.with(|p| !p.is_empty())>
                <table class="list">
                    <thead><tr><th>"Policy"</th><th>"Service"</th><th>"Allow"</th><th>"Deny"</th><th>"Version"</th></tr></thead>
                    <tbody>
                        <For
                            each=move || policies.items.get()
                            key=|p| (key_of(&p.metadata), p.version())
                            children=move |p| {
                                let k = key_of(&p.metadata);
                                let (href, label) = (format!("/policies/{k}"), k.clone());
                                let spec = p.spec.clone().unwrap_or_default();
                                let list = |rules: &[pb::AuthorizationRule]| if rules.is_empty() {
                                    view! { <span class="muted">"—"</span> }.into_any()
                                } else {
                                    view! { <ul class="rules">{rules.iter().map(|r| view! { <li>{rule_summary(r)}</li> }).collect_view()}</ul> }.into_any()
                                };
                                view! {
                                    <tr data-policy=k>
                                        <td><Link href=href>{label}</Link></td>
                                        <td>{spec.service.clone()}</td>
                                        <td>{list(&spec.allow)}</td>
                                        <td>{list(&spec.deny)}</td>
                                        <td>{p.version()}</td>
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

fn pick_rules<'a>(
    list: &str,
    s: &'a mut pb::AuthorizationPolicySpec,
) -> &'a mut Vec<pb::AuthorizationRule> {
    if list == "allow" {
        &mut s.allow
    } else {
        &mut s.deny
    }
}

fn new_policy() -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        metadata: Some(pb::ObjectMeta {
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(pb::AuthorizationPolicySpec::default()),
    }
}

#[component]
pub fn PolicyEditor(key: Option<(String, String)>) -> impl IntoView {
    let ctx = Ctx::get();
    let creating = key.is_none();
    let draft = RwSignal::new(new_policy());
    let loaded = RwSignal::new(creating);
    let load_error = RwSignal::new(None::<String>);
    let form = FormState::new();
    form.track_edits(draft);
    let confirm_delete = RwSignal::new(false);
    let services: Live<pb::Service> = live(ctx.token());
    let policies: Live<pb::AuthorizationPolicy> = live(ctx.token());

    let load = {
        let key = key.clone();
        move || {
            let Some((ns, name)) = key.clone() else {
                return;
            };
            let token = ctx.token();
            spawn_local(async move {
                match client(&token)
                    .get_authorization_policy(pb::GetRequest {
                        namespace: ns,
                        name,
                    })
                    .await
                {
                    Ok(p) => {
                        draft.set(p.into_inner());
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
    let ns = move || {
        draft.with(|p| {
            p.metadata
                .as_ref()
                .map(|m| m.namespace.clone())
                .unwrap_or_default()
        })
    };
    let service = move || {
        draft.with(|p| {
            p.spec
                .as_ref()
                .map(|s| s.service.clone())
                .unwrap_or_default()
        })
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
    let allow_count =
        Memo::new(move |_| draft.with(|p| p.spec.as_ref().map_or(0, |s| s.allow.len())));
    let deny_count =
        Memo::new(move |_| draft.with(|p| p.spec.as_ref().map_or(0, |s| s.deny.len())));

    let save = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let policy = draft.get_untracked();
        let (pns, pname) = policy
            .metadata
            .as_ref()
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .unwrap_or_default();
        if creating && !policies.synced.get_untracked() {
            // Without the list, an existing name would be overwritten (Apply without a version).
            form.error.set(Some(ApiError {
                code: tonic::Code::Unavailable,
                message: "The existing policies are still loading; save again in a moment.".into(),
                fields: Vec::new(),
            }));
            return;
        }
        if creating && policies.get(&pns, &pname).is_some() {
            form.error.set(Some(ApiError {
                code: tonic::Code::AlreadyExists,
                message: format!("Policy {pns}/{pname} already exists."),
                fields: vec![(
                    "metadata.name".into(),
                    "a policy with this name exists in this namespace; open it to edit".into(),
                )],
            }));
            return;
        }
        // The control plane's own validation, here: its field errors without a round trip.
        if let Err(e) = check_before_save(
            &AnyResource::AuthorizationPolicy(policy.clone()),
            Some(services),
        ) {
            form.refused(e);
            return;
        }
        form.start();
        let token = ctx.token();
        spawn_local(async move {
            match client(&token).apply_authorization_policy(policy).await {
                Ok(resp) => {
                    let saved = resp.into_inner().authorization_policy.unwrap_or_default();
                    let v = saved.version();
                    if creating {
                        navigate("/policies");
                        ctx.flash.set(Some(format!(
                            "Policy {} created (version {v}).",
                            key_of(&saved.metadata)
                        )));
                    } else {
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
            match client(&token).delete_authorization_policy(req).await {
                Ok(_) => {
                    navigate("/policies");
                    ctx.flash.set(Some(format!(
                        "Policy {}/{} deleted.",
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
        Some((ns, name)) => format!("Policy {ns}/{name}"),
        None => "New authorization policy".to_string(),
    };
    let rules = move |list: &'static str, count: Memo<usize>| {
        let read = move |k: usize, f: fn(&pb::AuthorizationRule) -> Vec<String>| {
            Signal::derive(move || {
                draft.with(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| {
                            if list == "allow" {
                                s.allow.get(k)
                            } else {
                                s.deny.get(k)
                            }
                        })
                        .map(f)
                        .unwrap_or_default()
                })
            })
        };
        let write = move |k: usize, f: fn(&mut pb::AuthorizationRule, Vec<String>)| {
            Callback::new(move |v: Vec<String>| {
                draft.update(|p| {
                    if let Some(r) =
                        pick_rules(list, p.spec.get_or_insert_with(Default::default)).get_mut(k)
                    {
                        f(r, v)
                    }
                })
            })
        };
        view! {
            <div class="sub-list">
                <h2>{if list == "allow" { "Allow rules" } else { "Deny rules" }}</h2>
                {move || (0..count.get()).map(|k| {
                    let path = format!("spec.{list}[{k}]");
                    view! {
                        <fieldset class="rule" aria-label=format!("{list} rule {}", k + 1)>
                            <legend>{format!("{} rule {}", if list == "allow" { "Allow" } else { "Deny" }, k + 1)}</legend>
                            <div class="row">
                                <div class="field wide">
                                    <label for=format!("{list}-{k}-sources")>"Sources (SPIFFE id patterns, one per line; empty: anyone)"</label>
                                    <ListInput id=format!("{list}-{k}-sources") multiline=true placeholder="spiffe://mesh.local/ns/shop/sa/*"
                                        value=read(k, |r| r.sources.clone()) set=write(k, |r, v| r.sources = v) />
                                    <FieldErr form=form path=format!("{path}.sources") />
                                </div>
                                <div class="field">
                                    <label for=format!("{list}-{k}-methods")>"Methods (empty: any)"</label>
                                    <ListInput id=format!("{list}-{k}-methods") placeholder="GET, POST"
                                        value=read(k, |r| r.methods.clone()) set=write(k, |r, v| r.methods = v) />
                                    <FieldErr form=form path=format!("{path}.methods") />
                                </div>
                                <div class="field">
                                    <label for=format!("{list}-{k}-paths")>"Paths (empty: any; /api/* for a prefix)"</label>
                                    <ListInput id=format!("{list}-{k}-paths") placeholder="/api/*"
                                        value=read(k, |r| r.paths.clone()) set=write(k, |r, v| r.paths = v) />
                                    <FieldErr form=form path=format!("{path}.paths") />
                                </div>
                            </div>
                            <button type="button" class="remove" on:click=move |_| draft.update(|p| { let l = pick_rules(list, p.spec.get_or_insert_with(Default::default)); if k < l.len() { l.remove(k); } })>
                                {format!("Remove {list} rule {}", k + 1)}
                            </button>
                        </fieldset>
                    }
                }).collect_view()}
                <button type="button" on:click=move |_| draft.update(|p| pick_rules(list, p.spec.get_or_insert_with(Default::default)).push(pb::AuthorizationRule::default()))>
                    {if list == "allow" { "Add allow rule" } else { "Add deny rule" }}
                </button>
            </div>
        }
    };
    view! {
        <section>
            <div class="page-head">
                <h1>{title}</h1>
                <Link href="/policies">"← All policies"</Link>
            </div>
            {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
            <Show when=move || loaded.get() fallback=move || view! { <Show when=move || load_error.get().is_none()><p class="loading">"Loading…"</p></Show> }>
                <form class="editor" on:submit=save novalidate>
                    <fieldset disabled=move || !ctx.can_write() || form.saving.get()>
                        <legend class="visually-hidden">"Authorization policy"</legend>
                        <div class="row">
                            <div class="field">
                                <label for="policy-namespace">"Namespace"</label>
                                <input id="policy-namespace" type="text" readonly=!creating prop:value=ns
                                    on:input=move |e| draft.update(|p| p.metadata.get_or_insert_with(Default::default).namespace = event_target_value(&e)) />
                                <FieldErr form=form path="metadata.namespace" />
                            </div>
                            <div class="field">
                                <label for="policy-name">"Name"</label>
                                <input id="policy-name" type="text" readonly=!creating prop:value=move || draft.with(|p| p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default())
                                    on:input=move |e| draft.update(|p| p.metadata.get_or_insert_with(Default::default).name = event_target_value(&e)) />
                                <FieldErr form=form path="metadata.name" />
                            </div>
                            <div class="field">
                                <label for="policy-service">"Service"</label>
                                <select id="policy-service" on:change=move |e| draft.update(|p| p.spec.get_or_insert_with(Default::default).service = event_target_value(&e))>
                                    <option value="" prop:selected=move || service().is_empty()>"Choose a service…"</option>
                                    {move || service_names().into_iter().map(|n| { let v = n.clone(); view! { <option value=n.clone() prop:selected=move || service() == v>{n.clone()}</option> } }).collect_view()}
                                </select>
                                <FieldErr form=form path="spec.service" />
                            </div>
                        </div>
                        {rules("allow", allow_count)}
                        {rules("deny", deny_count)}
                        <FormStatus form=form reload=reload what="This policy" />
                        <div class="actions">
                            <button type="submit" class="primary" disabled=move || creating && !policies.synced.get()>{move || if form.saving.get() { "Saving…" } else if creating { "Create policy" } else { "Save changes" }}</button>
                            {(!creating).then(|| view! { <button type="button" class="danger" on:click=move |_| confirm_delete.set(true)>"Delete policy…"</button> })}
                        </div>
                        <Show when=move || confirm_delete.get()>
                            <div class="confirm" role="alertdialog" aria-labelledby="confirm-title">
                                <p id="confirm-title">{move || format!("Delete policy {}? The mesh default then decides for this service.", draft.with(|p| key_of(&p.metadata)))}</p>
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

/// The mesh-wide settings: one MeshConfig, default/mesh. Follows the stored object live
/// until the user starts editing; a save sends the version the form was filled from.
#[component]
pub fn MeshPage() -> impl IntoView {
    let ctx = Ctx::get();
    let mesh: Live<pb::MeshConfig> = live(ctx.token());
    let form = FormState::new();
    let draft = RwSignal::new(None::<pb::MeshConfig>);
    form.track_edits(draft);
    let editing = RwSignal::new(false);
    let stored = move || mesh.get("default", "mesh");
    // Fill the form from the stored object whenever it changes and the user has not edited.
    Effect::new(move |_| {
        let s = stored();
        if mesh.synced.get() && !editing.get_untracked() {
            draft.set(Some(s.unwrap_or_else(|| pb::MeshConfig {
                metadata: Some(pb::ObjectMeta {
                    namespace: "default".into(),
                    name: "mesh".into(),
                    ..Default::default()
                }),
                spec: Some(pb::MeshConfigSpec::default()),
            })));
        }
    });
    let reload = Callback::new(move |()| {
        editing.set(false);
        form.error.set(None);
        draft.set(stored().or_else(|| draft.get_untracked()));
    });
    let get = move |f: fn(&pb::MeshConfigSpec) -> String| {
        move || {
            draft.with(|d| {
                d.as_ref()
                    .and_then(|d| d.spec.as_ref())
                    .map(f)
                    .unwrap_or_default()
            })
        }
    };
    let set = move |f: fn(&mut pb::MeshConfigSpec, String), v: String| {
        editing.set(true);
        draft.update(|d| {
            if let Some(d) = d {
                f(d.spec.get_or_insert_with(Default::default), v)
            }
        });
    };
    let policy = get(|s| {
        if s.default_policy.is_empty() {
            "ALLOW".into()
        } else {
            s.default_policy.clone()
        }
    });
    let cross = get(|s| {
        if s.cross_namespace_policy.is_empty() {
            "DENY".into()
        } else {
            s.cross_namespace_policy.clone()
        }
    });
    let save = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let Some(config) = draft.get_untracked() else {
            return;
        };
        // The control plane's own validation, here: its field errors without a round trip.
        if let Err(e) = check_before_save(&AnyResource::MeshConfig(config.clone()), None) {
            form.refused(e);
            return;
        }
        form.start();
        let token = ctx.token();
        spawn_local(async move {
            match client(&token).apply_mesh_config(config).await {
                Ok(resp) => {
                    let saved = resp.into_inner().mesh_config.unwrap_or_default();
                    let v = saved.version();
                    draft.set(Some(saved));
                    editing.set(false);
                    form.done(Ok(format!("Saved (version {v}).")));
                }
                Err(s) => form.done(Err(ApiError::from_status(&s))),
            }
        });
    };
    view! {
        <section>
            <div class="page-head">
                <h1>"Mesh settings"</h1>
                <p class="sub">"Mesh-wide defaults (MeshConfig default/mesh). Updates live."</p>
            </div>
            <LiveState synced=mesh.synced error=mesh.error />
            <Show when=move || draft.with(Option::is_some)>
                <form class="editor" on:submit=save novalidate>
                    <fieldset disabled=move || !ctx.can_write() || form.saving.get()>
                        <legend class="visually-hidden">"Mesh settings"</legend>
                        <fieldset class="radio-group">
                            <legend>"Requests no authorization policy speaks about"</legend>
                            {["ALLOW", "DENY"].into_iter().map(|p| view! {
                                <label class="radio">
                                    <input type="radio" name="default-policy" value=p prop:checked=move || policy() == p
                                        on:change=move |_| set(|s, v| s.default_policy = v, p.to_string()) />
                                    {if p == "ALLOW" { " Allow (default)" } else { " Deny" }}
                                </label>
                            }).collect_view()}
                            <FieldErr form=form path="spec.defaultPolicy" />
                        </fieldset>
                        <fieldset class="radio-group">
                            <legend>"Callers from another namespace"</legend>
                            {["DENY", "ALLOW"].into_iter().map(|p| view! {
                                <label class="radio">
                                    <input type="radio" name="cross-namespace-policy" value=p prop:checked=move || cross() == p
                                        on:change=move |_| set(|s, v| s.cross_namespace_policy = v, p.to_string()) />
                                    {if p == "DENY" { " Only where an allow rule names them (default)" } else { " Judge them like callers of the same namespace" }}
                                </label>
                            }).collect_view()}
                            <FieldErr form=form path="spec.crossNamespacePolicy" />
                        </fieldset>
                        <div class="row">
                            <div class="field">
                                <label for="mesh-timeout">"Default request timeout"</label>
                                <input id="mesh-timeout" type="text" placeholder="e.g. 15s (empty: none)" prop:value=get(|s| s.default_timeout.clone())
                                    on:input=move |e| set(|s, v| s.default_timeout = v, event_target_value(&e)) />
                                <FieldErr form=form path="spec.defaultTimeout" />
                            </div>
                            <div class="field">
                                <label for="mesh-svid-ttl">"Workload certificate lifetime"</label>
                                <input id="mesh-svid-ttl" type="text" placeholder="e.g. 24h (empty: server default)" prop:value=get(|s| s.svid_ttl.clone())
                                    on:input=move |e| set(|s, v| s.svid_ttl = v, event_target_value(&e)) />
                                <FieldErr form=form path="spec.svidTtl" />
                            </div>
                        </div>
                        <FormStatus form=form reload=reload what="The mesh settings" />
                        <div class="actions">
                            <button type="submit" class="primary">{move || if form.saving.get() { "Saving…" } else { "Save settings" }}</button>
                        </div>
                        {move || {
                            let mine = draft.with(|d| d.as_ref().map_or(0, |d| d.version()));
                            let now = stored().map_or(0, |s| s.version());
                            (editing.get() && !form.saving.get() && now > mine).then(|| view! {
                                <div class="banner conflict" role="status">
                                    <strong>{format!("The mesh settings changed since you opened them (now version {now}).")}</strong>
                                    " Saving now would be refused. "
                                    <button type="button" on:click=move |_| reload.run(())>"Reload the current version"</button>
                                </div>
                            })
                        }}
                    </fieldset>
                </form>
            </Show>
        </section>
    }
}
