// Starts the console. A file rather than an inline script, so the Content-Security-Policy
// the control plane sends needs no 'unsafe-inline'. build.sh replaces the @...@ names with
// the content-hashed files.
import init from "/quiver_console-d2d4b1703d69f45d.js";
init({ module_or_path: "/quiver_console_bg-0d44d37778e8370a.wasm" }).catch((e) => {
  document.body.textContent = "The Quiver console failed to start: " + e;
});
