//! quiver-console: the operator's web console. A client-side-rendered Leptos app compiled to
//! wasm32, served as static files by quiver-control, speaking gRPC-web to the same
//! `quiver.v1.MeshAdmin` API as quiverctl with the signed-in user's token. It never decides
//! what is valid or allowed: the API does, and the console shows what it answered.
#![forbid(unsafe_code)]

pub mod api;
pub mod canaries;
pub mod canary_view;
pub mod policies;
pub mod routes;
pub mod services;
pub mod topology;
pub mod traces;
pub mod ui;
pub mod waterfall;

/// The `quiver.v1` messages (quiver-api's) and the MeshAdmin client generated for them here.
#[allow(clippy::all)]
pub mod pb {
    pub use quiver_api::v1::*;
    tonic::include_proto!("quiver.v1");
}

use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::ui::{Ctx, Link, Session, navigate};

/// The key under which the token is kept: sessionStorage only, so it is gone with the tab.
const TOKEN_KEY: &str = "quiver.token";

#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    leptos::mount::mount_to_body(App);
}

fn storage() -> Option<web_sys::Storage> {
    window().session_storage().ok().flatten()
}

/// Ask the API who `token` is; the role decides which controls are enabled.
async fn sign_in(token: String) -> Result<Session, api::ApiError> {
    let status = api::client(&token)
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| api::ApiError::from_status(&s))?
        .into_inner();
    Ok(Session {
        token,
        role: status.role,
    })
}

#[component]
pub fn App() -> impl IntoView {
    let path = window()
        .location()
        .pathname()
        .unwrap_or_else(|_| "/".into());
    let ctx = Ctx {
        session: RwSignal::new(None),
        path: RwSignal::new(path),
        now: RwSignal::new(js_sys::Date::now()),
        flash: RwSignal::new(None),
    };
    ctx.init();
    // The trace search outlives the page, so coming back from a trace shows the same list.
    provide_context(traces::TraceSearch::new());
    let _ = set_interval_with_handle(
        move || ctx.now.set(js_sys::Date::now()),
        std::time::Duration::from_secs(1),
    );
    let _popstate = window_event_listener(leptos::ev::popstate, move |_| {
        ctx.path.set(
            window()
                .location()
                .pathname()
                .unwrap_or_else(|_| "/".into()),
        );
    });

    // A token from earlier in this tab: check it again before showing anything.
    let restoring = RwSignal::new(false);
    if let Some(token) = storage().and_then(|s| s.get_item(TOKEN_KEY).ok().flatten()) {
        restoring.set(true);
        spawn_local(async move {
            match sign_in(token).await {
                Ok(s) => ctx.session.set(Some(s)),
                Err(_) => {
                    if let Some(s) = storage() {
                        let _ = s.remove_item(TOKEN_KEY);
                    }
                }
            }
            restoring.set(false);
        });
    }

    view! {
        <Show
            when=move || ctx.session.with(Option::is_some)
            fallback=move || {
                view! {
                    <Show when=move || !restoring.get() fallback=|| view! { <p class="loading">"Signing in…"</p> }>
                        <SignIn />
                    </Show>
                }
            }
        >
            <Shell />
        </Show>
    }
}

#[component]
fn SignIn() -> impl IntoView {
    let ctx = Ctx::get();
    let token = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let submit = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let t = token.get_untracked().trim().to_string();
        if t.is_empty() {
            error.set(Some("Enter an API token.".into()));
            return;
        }
        busy.set(true);
        error.set(None);
        spawn_local(async move {
            match sign_in(t.clone()).await {
                Ok(s) => {
                    if let Some(st) = storage() {
                        let _ = st.set_item(TOKEN_KEY, &t);
                    }
                    ctx.session.set(Some(s));
                }
                Err(e) => error.set(Some(match e.code {
                    tonic::Code::Unauthenticated => {
                        "This token is not known to the control plane.".to_string()
                    }
                    _ => e.summary(),
                })),
            }
            busy.set(false);
        });
    };
    view! {
        <main class="signin">
            <form on:submit=submit aria-labelledby="signin-title">
                <h1 id="signin-title">"Quiver console"</h1>
                <p>"Sign in with an API token (admin or viewer). It is kept in this tab's session storage only."</p>
                <div class="field">
                    <label for="token">"API token"</label>
                    <input
                        id="token"
                        type="password"
                        autocomplete="off"
                        placeholder="qvr_…"
                        prop:value=move || token.get()
                        on:input=move |e| token.set(event_target_value(&e))
                    />
                    {move || error.get().map(|e| view! { <p class="field-error" role="alert" data-field="token">{e}</p> })}
                    <small>"Create one with " <code>"quiverctl token create --role viewer"</code> " or use the admin token quiver-control printed at first start."</small>
                </div>
                <button type="submit" disabled=move || busy.get()>
                    {move || if busy.get() { "Signing in…" } else { "Sign in" }}
                </button>
            </form>
        </main>
    }
}

#[component]
fn Shell() -> impl IntoView {
    let ctx = Ctx::get();
    let sign_out = move |_| {
        if let Some(s) = storage() {
            let _ = s.remove_item(TOKEN_KEY);
        }
        ctx.session.set(None);
        navigate("/");
    };
    let role = move || {
        ctx.session
            .with(|s| s.as_ref().map(|s| s.role.clone()).unwrap_or_default())
    };
    let nav = |href: &'static str, label: &'static str| {
        let active = move || {
            let p = ctx.path.get();
            (href == "/services" && (p == "/" || p.starts_with("/services")))
                || (href != "/services" && p.starts_with(href))
        };
        view! {
            <li class:active=active aria-current=move || active().then_some("page")>
                <Link href=href>{label}</Link>
            </li>
        }
    };
    view! {
        <header class="top">
            <span class="brand">"Quiver"</span>
            <nav aria-label="Main">
                <ul>
                    {nav("/services", "Services")}
                    {nav("/routes", "Routes")}
                    {nav("/canaries", "Canaries")}
                    {nav("/policies", "Policies")}
                    {nav("/traces", "Traces")}
                    {nav("/topology", "Topology")}
                    {nav("/mesh", "Mesh settings")}
                </ul>
            </nav>
            <span class="who">
                <span class="role" data-role=role>{role}</span>
                {move || (!ctx.can_write()).then(|| view! { <span class="readonly">" (read-only)"</span> })}
                <button type="button" class="link" on:click=sign_out>"Sign out"</button>
            </span>
        </header>
        <main id="main">
            {move || ctx.flash.get().map(|f| view! {
                <p class="notice flash" role="status">{f}" "
                    <button type="button" class="link" aria-label="Dismiss" on:click=move |_| ctx.flash.set(None)>"×"</button>
                </p>
            })}
            {move || page(&ctx.path.get())}
        </main>
    }
}

/// The client-side router: the path decides the page.
fn page(path: &str) -> AnyView {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let own = |s: &&str| s.to_string();
    match parts.as_slice() {
        [] | ["services"] => view! { <services::ServicesPage /> }.into_any(),
        ["routes"] => view! { <routes::RoutesPage /> }.into_any(),
        ["routes", "new"] => view! { <routes::RouteEditor key=None /> }.into_any(),
        ["routes", ns, name] => {
            view! { <routes::RouteEditor key=Some((own(ns), own(name))) /> }.into_any()
        }
        ["canaries"] => view! { <canaries::CanariesPage /> }.into_any(),
        ["canaries", "new"] => view! { <canaries::CanaryEditor key=None /> }.into_any(),
        ["canaries", ns, name] => {
            view! { <canaries::CanaryEditor key=Some((own(ns), own(name))) /> }.into_any()
        }
        ["policies"] => view! { <policies::PoliciesPage /> }.into_any(),
        ["policies", "new"] => view! { <policies::PolicyEditor key=None /> }.into_any(),
        ["policies", ns, name] => {
            view! { <policies::PolicyEditor key=Some((own(ns), own(name))) /> }.into_any()
        }
        ["traces"] => view! { <traces::TracesPage /> }.into_any(),
        ["traces", id] => view! { <waterfall::TracePage trace_id=own(id) /> }.into_any(),
        ["topology"] => view! { <topology::TopologyPage /> }.into_any(),
        ["mesh"] => view! { <policies::MeshPage /> }.into_any(),
        _ => {
            let p = path.to_string();
            view! {
                <section>
                    <h1>"Not found"</h1>
                    <p>"There is no console page at " <code>{p}</code> ". " <Link href="/services">"Go to Services"</Link></p>
                </section>
            }
            .into_any()
        }
    }
}
