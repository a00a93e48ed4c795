//! The price tables against an independent one: tests/prices/cross_check.py compares every
//! priced model of `providers/*.toml` with genai-prices (installed in the test venv by
//! tests/setup-python.sh) and fails on a difference no `note` explains.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SIDETRACE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `bash tests/setup-python.sh` (the README's test command does)",
        venv.display()
    );
    venv
}

/// Runs the cross-check on a providers directory: success and output.
fn cross_check(providers: &Path) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prices/cross_check.py");
    let out = Command::new(python())
        .arg(script)
        .arg("--providers")
        .arg(providers)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_priced_model_agrees_with_genai_prices_or_says_why_not() {
    let providers = Path::new(env!("CARGO_MANIFEST_DIR")).join("providers");
    let (ok, report) = cross_check(&providers);
    assert!(ok, "{report}");
    // The check compared something: most of the table is known there.
    let known: usize = report
        .split("knows ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no summary in: {report}"));
    assert!(known >= 40, "{report}");
}

#[test]
fn a_changed_price_fails_the_check_until_a_note_explains_it() {
    let dir = tempfile::tempdir().unwrap();
    let table = |note: &str| {
        format!(
            "name = \"openai\"\n\n[[models]]\nname = \"gpt-4o\"\ninput = \"9.99\"\noutput = \"10.00\"\n{note}"
        )
    };
    std::fs::write(dir.path().join("openai.toml"), table("")).unwrap();
    let (ok, report) = cross_check(dir.path());
    assert!(!ok, "{report}");
    assert!(
        report.contains("UNEXPLAINED: openai.toml gpt-4o") && report.contains("input 9.99 here"),
        "{report}"
    );
    // A note that does not name genai-prices explains nothing about this difference.
    std::fs::write(
        dir.path().join("openai.toml"),
        table("note = \"from memory\"\n"),
    )
    .unwrap();
    assert!(!cross_check(dir.path()).0);
    // A note naming genai-prices (which source is newer, and why) settles it.
    std::fs::write(
        dir.path().join("openai.toml"),
        table("note = \"genai-prices has the old price; OpenAI's page of today is newer\"\n"),
    )
    .unwrap();
    let (ok, report) = cross_check(dir.path());
    assert!(ok, "{report}");
    assert!(
        report.contains("differs, explained: openai.toml gpt-4o"),
        "{report}"
    );
}
