// Starts the console. A file rather than an inline script, so the Content-Security-Policy
// the control plane sends needs no 'unsafe-inline'. build.sh replaces the @...@ names with
// the content-hashed files.
import init from "/quiver_console-1696323dd38ffd4c.js";
init({ module_or_path: "/quiver_console_bg-72ad19470e33fff2.wasm" }).catch((e) => {
  document.body.textContent = "The Quiver console failed to start: " + e;
});
