// Starts the console. A file rather than an inline script, so the Content-Security-Policy
// the control plane sends needs no 'unsafe-inline'. build.sh replaces the @...@ names with
// the content-hashed files.
import init from "/quiver_console-67654bf6d3f42a7c.js";
init({ module_or_path: "/quiver_console_bg-20e7d5e7df3ffa81.wasm" }).catch((e) => {
  document.body.textContent = "The Quiver console failed to start: " + e;
});
