//! Records the commit the hub is built from, for `GET /version`: `git rev-parse` when the
//! source is a git checkout, else `HUB_GIT_COMMIT` from the environment, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HUB_GIT_COMMIT");
    let commit = std::env::var("HUB_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=HUB_GIT_COMMIT={commit}");
    // Rebuild when the checked-out commit moves; only paths that exist, since cargo reruns a
    // build script on every build when a watched path is missing.
    let mut watched = false;
    for p in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
            watched = true;
        }
    }
    if !watched {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
