//! Replays the checked-in fuzz corpus (`fuzz/corpus/emulate/`) through the fuzz harness, so
//! every input the fuzzer kept is checked against the harness's invariants on every
//! `cargo test`, on stable and without libFuzzer. See `fuzz/README.md`.

#[path = "../fuzz/fuzz_targets/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/emulate")
}

/// The variant name of a result, for the summary.
fn kind(outcome: &harness::Outcome) -> String {
    let text = format!("{:?}", outcome.result);
    let end = text
        .char_indices()
        .skip(4)
        .find(|(_, c)| matches!(c, '(' | '{' | ' ' | ')'))
        .map_or(text.len(), |(i, _)| i);
    text[..end].to_string()
}

#[test]
fn fuzz_corpus_replays_without_violations() {
    hvemu::warm_up();
    let dir = corpus_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "fuzz corpus {} is empty: run `cargo +nightly fuzz cmin emulate` (see fuzz/README.md)",
        dir.display()
    );

    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped = 0;
    let mut most_calls = 0;
    let mut tightest = 0.0f64;
    for path in &files {
        let data = std::fs::read(path).expect("readable corpus file");
        // A panic here names the file: replay it with
        // `cargo +nightly fuzz run emulate <file>` or `cargo +nightly fuzz fmt emulate <file>`.
        let outcome = match std::panic::catch_unwind(|| harness::run_bytes(&data)) {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                skipped += 1;
                continue;
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("corpus input {} fails: {msg}", path.display());
            }
        };
        *kinds.entry(kind(&outcome)).or_default() += 1;
        most_calls = most_calls.max(outcome.calls.len());
        tightest = tightest.max(outcome.calls.len() as f64 / outcome.bound.total as f64);
    }
    println!(
        "replayed {} corpus inputs ({skipped} did not build a case); most callbacks in one \
         emulation: {most_calls} ({:.0}% of its bound at most)",
        files.len(),
        tightest * 100.0
    );
    for (kind, n) in &kinds {
        println!("  {n:5} {kind}");
    }
}

/// Minimised inputs of bugs the fuzzer found that are not fixed yet
/// (`fuzz/regressions/emulate/`, one file per bug, named after it; see `fuzz/README.md`).
/// Ignored, so that a known bug does not fail every `cargo test`; run it with `cargo test
/// --test fuzz_corpus -- --ignored`. Once a bug is fixed, move its file into the corpus.
#[test]
#[ignore = "replays known, unfixed bugs (fuzz/regressions/emulate/)"]
fn fuzz_regressions_replay_without_violations() {
    hvemu::warm_up();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/emulate");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return; // No known bugs.
    };
    let mut failures = Vec::new();
    for entry in entries {
        let path = entry.expect("readable entry").path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).expect("readable regression file");
        if let Err(panic) = std::panic::catch_unwind(|| harness::run_bytes(&data)) {
            let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            let first = msg.lines().next().unwrap_or_default().to_string();
            failures.push(format!("{}: {first}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "still failing:\n{}",
        failures.join("\n")
    );
}
