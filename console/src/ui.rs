//! Shared pieces of the console: the session and path context, client-side navigation, the
//! form state every editor uses (saving, field errors, stale-version conflicts) and small
//! display helpers. No API calls here besides what a form's save closure does.

use leptos::ev;
use leptos::prelude::*;

use crate::api::ApiError;

/// Who is signed in.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub token: String,
    /// "admin" or "viewer", as the API's Status call reported it.
    pub role: String,
}

/// App-wide state, provided once at the root.
#[derive(Clone, Copy)]
pub struct Ctx {
    pub session: RwSignal<Option<Session>>,
    /// The current location path (client-side routing).
    pub path: RwSignal<String>,
    /// Milliseconds since the epoch, ticking once a second (lease countdowns).
    pub now: RwSignal<f64>,
    /// A message for the next page ("Route shop/web created").
    pub flash: RwSignal<Option<String>>,
}

impl Ctx {
    /// The app's context. Kept in a global as well as in Leptos' context: async tasks (a save
    /// that navigates when it is done) run outside any reactive owner.
    pub fn get() -> Ctx {
        // Set by `App` before any page renders.
        *CTX.get()
            .unwrap_or_else(|| panic!("Ctx::init runs in App first"))
    }

    pub fn init(self) {
        let _ = CTX.set(self);
    }

    pub fn token(&self) -> String {
        self.session
            .with_untracked(|s| s.as_ref().map(|s| s.token.clone()).unwrap_or_default())
    }

    /// The signed-in user may write (admin). Viewers get every write control disabled.
    pub fn can_write(&self) -> bool {
        self.session
            .with(|s| s.as_ref().is_some_and(|s| s.role == "admin"))
    }
}

static CTX: std::sync::OnceLock<Ctx> = std::sync::OnceLock::new();

/// Go to `path` without reloading the page.
pub fn navigate(path: &str) {
    if let Ok(history) = window().history() {
        let _ = history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(path));
    }
    let ctx = Ctx::get();
    ctx.flash.set(None);
    ctx.path.set(path.to_string());
}

/// A link handled by the client-side router (modifier clicks still open a new tab).
#[component]
pub fn Link(#[prop(into)] href: String, children: Children) -> impl IntoView {
    let target = href.clone();
    view! {
        <a
            href=href
            on:click=move |e: ev::MouseEvent| {
                if e.button() == 0 && !e.ctrl_key() && !e.meta_key() && !e.shift_key() {
                    e.prevent_default();
                    navigate(&target);
                }
            }
        >
            {children()}
        </a>
    }
}

/// What a form knows about its last save.
#[derive(Clone, Copy)]
pub struct FormState {
    pub saving: RwSignal<bool>,
    pub error: RwSignal<Option<ApiError>>,
    pub notice: RwSignal<Option<String>>,
    /// Field paths the form shows next to an input (registered by `FieldErr`); the other
    /// field errors go into the banner, so none is hidden.
    pub shown: StoredValue<Vec<String>>,
    /// The form was edited after the last save answered: its errors describe an older draft.
    pub edited: RwSignal<bool>,
}

impl FormState {
    pub fn new() -> Self {
        Self {
            saving: RwSignal::new(false),
            error: RwSignal::new(None),
            notice: RwSignal::new(None),
            shown: StoredValue::new(Vec::new()),
            edited: RwSignal::new(false),
        }
    }

    pub fn start(&self) {
        self.edited.set(false);
        self.saving.set(true);
        self.error.set(None);
        self.notice.set(None);
    }

    /// The draft was refused before it was sent (the console's own check): the errors
    /// describe the draft as it is now.
    pub fn refused(&self, e: ApiError) {
        self.edited.set(false);
        self.notice.set(None);
        self.error.set(Some(e));
    }

    pub fn done(&self, result: Result<String, ApiError>) {
        self.saving.set(false);
        match result {
            Ok(notice) => self.notice.set(Some(notice)),
            Err(e) => self.error.set(Some(e)),
        }
    }

    /// API errors for this field path, or one item of it when it is a list (`path[3]`).
    pub fn field(&self, path: &str) -> Vec<String> {
        self.error.with(|e| {
            e.iter()
                .flat_map(|e| e.fields.iter())
                .filter(|(p, _)| belongs(p, path))
                .map(|(_, r)| r.clone())
                .collect()
        })
    }

    /// Note every change of `draft` after the first, so stale errors say so.
    pub fn track_edits<T: Clone + Send + Sync + 'static>(&self, draft: RwSignal<T>) {
        let edited = self.edited;
        Effect::new(move |first: Option<()>| {
            draft.track();
            if first.is_some() {
                edited.set(true);
            }
        });
    }

    fn is_shown(&self, p: &str) -> bool {
        self.shown.with_value(|s| s.iter().any(|f| belongs(p, f)))
    }
}

/// `error_path` is `field`, or `field[N]`.
fn belongs(error_path: &str, field: &str) -> bool {
    match error_path.strip_prefix(field) {
        Some("") => true,
        Some(rest) => {
            rest.starts_with('[')
                && rest.ends_with(']')
                && rest[1..rest.len() - 1].bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

impl Default for FormState {
    fn default() -> Self {
        Self::new()
    }
}

/// The API's errors for one field (and any `extra` found by the form itself), next to it.
#[component]
pub fn FieldErr(
    form: FormState,
    #[prop(into)] path: String,
    #[prop(optional, into)] extra: Option<Signal<Option<String>>>,
) -> impl IntoView {
    form.shown.update_value(|s| s.push(path.clone()));
    let p = path.clone();
    let messages = Signal::derive(move || {
        let mut m = form.field(&p);
        if form.edited.get() && !m.is_empty() {
            if extra.is_some() {
                // The form checks this field itself, on the current draft.
                m.clear();
            } else {
                m = m
                    .into_iter()
                    .map(|e| format!("{e} (at the last save)"))
                    .collect();
            }
        }
        if let Some(x) = extra.and_then(|x| x.get()) {
            m.insert(0, x);
        }
        // The form's own check and the API often say the same thing.
        m.dedup();
        m
    });
    view! {
        <Show when=move || !messages.with(Vec::is_empty)>
            <p class="field-error" role="alert" data-field=path.clone()>
                {move || messages.get().join("; ")}
            </p>
        </Show>
    }
}

/// The result of the last save: success notice, stale-version conflict (with reload), or
/// the API's message with any field errors the form does not show next to a field.
#[component]
pub fn FormStatus(
    form: FormState,
    /// Throw the edits away and load the stored object again.
    #[prop(into)]
    reload: Callback<()>,
    /// What is being edited, for the messages ("This route").
    what: &'static str,
) -> impl IntoView {
    view! {
        {move || form.notice.get().map(|n| view! { <p class="notice" role="status">{n}</p> })}
        {move || {
            form.error
                .get()
                .map(|e| {
                    if e.is_conflict() {
                        view! {
                            <div class="banner conflict" role="alert">
                                <strong>{format!("{what} changed since you opened it.")}</strong>
                                " Nothing was saved. "
                                <span class="detail">{e.message.clone()}</span>
                                " "
                                <button type="button" on:click=move |_| reload.run(())>
                                    "Reload the current version"
                                </button>
                            </div>
                        }
                            .into_any()
                    } else {
                        let rest: Vec<(String, String)> = e
                            .fields
                            .iter()
                            .filter(|(p, _)| !form.is_shown(p))
                            .cloned()
                            .collect();
                        view! {
                            <div class="banner error" role="alert">
                                <strong>{e.summary()}</strong>
                                {(!e.fields.is_empty())
                                    .then(|| {
                                        view! {
                                            <span>" The problems are shown next to their fields."</span>
                                        }
                                    })}
                                {move || form.edited.get().then(|| view! { <span>" You have changed the form since; save again to check it."</span> })}
                                <ul>
                                    {rest
                                        .into_iter()
                                        .map(|(p, r)| view! { <li><code>{p}</code>": "{r}</li> })
                                        .collect_view()}
                                </ul>
                            </div>
                        }
                            .into_any()
                    }
                })
        }}
    }
}

/// Loading / stream error line for a live list.
#[component]
pub fn LiveState(synced: RwSignal<bool>, error: RwSignal<Option<String>>) -> impl IntoView {
    view! {
        {move || error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
        <Show when=move || !synced.get() && error.get().is_none()>
            <p class="loading" aria-live="polite">"Loading…"</p>
        </Show>
    }
}

/// "ns/name".
pub fn key_of(meta: &Option<crate::pb::ObjectMeta>) -> String {
    meta.as_ref()
        .map(|m| format!("{}/{}", m.namespace, m.name))
        .unwrap_or_default()
}

/// "3m 20s" for a duration in milliseconds.
pub fn human_ms(ms: f64) -> String {
    let s = (ms / 1000.0).round().max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// An RFC 3339 time as milliseconds since the epoch (NaN when empty or unreadable).
pub fn parse_time(rfc3339: &str) -> f64 {
    if rfc3339.is_empty() {
        return f64::NAN;
    }
    js_sys::Date::parse(rfc3339)
}

/// A labelled text input bound to a getter and a setter.
#[component]
pub fn TextField(
    #[prop(into)] label: String,
    #[prop(into)] id: String,
    #[prop(into)] value: Signal<String>,
    #[prop(into)] set: Callback<String>,
    #[prop(optional, into)] placeholder: String,
    #[prop(optional, into)] hint: String,
    #[prop(optional, into)] disabled: Signal<bool>,
    form: FormState,
    #[prop(into)] path: String,
) -> impl IntoView {
    let hint_id = format!("{id}-hint");
    view! {
        <div class="field">
            <label for=id.clone()>{label}</label>
            <input
                id=id.clone()
                type="text"
                placeholder=placeholder
                aria-describedby=hint_id.clone()
                prop:value=move || value.get()
                disabled=move || disabled.get()
                on:input=move |e| set.run(event_target_value(&e))
            />
            {(!hint.is_empty()).then(|| view! { <small id=hint_id.clone()>{hint.clone()}</small> })}
            <FieldErr form=form path=path />
        </div>
    }
}

/// A list typed as text ("GET, HEAD", or one item per line), written to the draft on every
/// keystroke. While the text already means the stored list it is left as typed, so a
/// trailing ", " does not vanish under the cursor.
#[component]
pub fn ListInput(
    #[prop(into)] id: String,
    #[prop(into)] value: Signal<Vec<String>>,
    #[prop(into)] set: Callback<Vec<String>>,
    #[prop(optional, into)] placeholder: String,
    /// A textarea with one item per line.
    #[prop(optional)]
    multiline: bool,
) -> impl IntoView {
    let input = NodeRef::<leptos::html::Input>::new();
    let area = NodeRef::<leptos::html::Textarea>::new();
    let shown = move || {
        let want = value.get();
        let typed = if multiline {
            area.get_untracked().map(|n| n.value())
        } else {
            input.get_untracked().map(|n| n.value())
        };
        match typed {
            Some(t) if crate::api::split_list(&t) == want => t,
            _ => want.join(if multiline { "\n" } else { ", " }),
        }
    };
    let on_input = move |e: ev::Event| set.run(crate::api::split_list(&event_target_value(&e)));
    if multiline {
        view! { <textarea node_ref=area id=id rows="2" placeholder=placeholder prop:value=shown on:input=on_input></textarea> }
            .into_any()
    } else {
        view! { <input node_ref=input id=id type="text" placeholder=placeholder prop:value=shown on:input=on_input /> }
            .into_any()
    }
}
