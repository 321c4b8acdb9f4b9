//! The project's build scripts, run for real against the binary under test.

use std::path::Path;
use std::process::Command;

fn train_profile(bin: &str) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/train-profile"))
        .arg(bin)
        .arg("--short")
        .output()
        .unwrap()
}

/// The profile-guided build (scripts/build-pgo) trains on `scripts/train-profile`: the demo under
/// `lifeline load` over every route, HTTP/1.1 and h2c, and a payment outage. Run here with the
/// uninstrumented binary: the script must find the demo's addresses, get answers without
/// transport errors in every healthy phase, and stop the demo cleanly (a demo that did not exit
/// normally would write no profile).
#[test]
fn the_pgo_training_run_drives_the_demo_through_every_phase() {
    let out = train_profile(env!("CARGO_BIN_EXE_lifeline"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("done: 6 phases"), "{stderr}");

    // A binary that is not a working lifeline fails the build instead of training nothing.
    let out = train_profile("false");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the demo exited"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
