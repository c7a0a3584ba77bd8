//! Embeds the web console's committed bundle (`console/dist`, built by `console/build.sh`)
//! into quiver-control at compile time: it writes `$OUT_DIR/console_bundle.rs`, one
//! `include_bytes!` per file with an ETag from the file's content, which `src/console.rs`
//! includes. Hidden files (the build stamp) are left out. When the bundle is missing the list
//! is empty and the control plane answers `/` with how to build it.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../console/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    match std::fs::read_dir(&dist) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.expect("read console/dist");
                let name = entry
                    .file_name()
                    .into_string()
                    .expect("UTF-8 file names in console/dist");
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path().canonicalize().expect("console/dist file");
                if !path.is_file() {
                    println!("cargo:warning=console/dist/{name} is not a file; not embedded");
                    continue;
                }
                files.push((name, path));
            }
        }
        Err(e) => println!(
            "cargo:warning=console/dist cannot be read ({e}): quiver-control will embed no web console (console/build.sh builds it)"
        ),
    }
    files.sort();
    let mut out = String::from("&[\n");
    for (name, path) in &files {
        let body = std::fs::read(path).expect("read a console/dist file");
        writeln!(
            out,
            "    EmbeddedFile {{ name: {name:?}, body: include_bytes!({path:?}), etag: \"\\\"{:016x}-{:x}\\\"\" }},",
            fnv1a(&body),
            body.len()
        )
        .expect("write to a String");
    }
    out.push_str("]\n");
    let target = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("console_bundle.rs");
    std::fs::write(target, out).expect("write console_bundle.rs");
}

/// 64-bit FNV-1a: an ETag only needs to change when the content does.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
