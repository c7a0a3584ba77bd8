// Starts the console. A file rather than an inline script, so the Content-Security-Policy
// the control plane sends needs no 'unsafe-inline'. build.sh replaces the @...@ names with
// the content-hashed files.
import init from "/@JS@";
init({ module_or_path: "/@WASM@" }).catch((e) => {
  document.body.textContent = "The Quiver console failed to start: " + e;
});
