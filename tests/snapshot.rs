//! Cold starts from snapshots end to end: a real `nexus-backend` process, `nexus-vmm snapshot`
//! of a function parked in `NEXT`, and `nexus-vmm invoke` processes restoring it (every
//! restore mode, ten at once, wrong prefetch hints, write-behind outputs, failed uploads).

mod common;

use std::path::PathBuf;
use std::process::Child;

use common::{Backend, Run, finish, spawn};

fn vmm(backend: &Backend, args: &[&str]) -> Run {
    finish(spawn(args), backend, &args.join(" "))
}

fn sample_text(words: usize) -> String {
    let vocabulary = ["nexus", "restores", "the", "parked", "function\n", "window"];
    (0..words)
        .map(|i| vocabulary[i % vocabulary.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A store with `in.txt`, a backend over it, and a wordcount snapshot.
struct Setup {
    dir: tempfile::TempDir,
    store: PathBuf,
    backend: Backend,
    snapshot: String,
}

fn setup(words: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("in.txt"), sample_text(words)).unwrap();
    let backend = Backend::local(dir.path(), &store);
    let snapshot = dir.path().join("snap").to_str().unwrap().to_owned();
    let run = vmm(
        &backend,
        &[
            "snapshot",
            "--guest",
            "wordcount",
            "--backend",
            backend.socket(),
            "--out",
            &snapshot,
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("parked in NEXT"));
    Setup {
        dir,
        store,
        backend,
        snapshot,
    }
}

fn invoke_args<'a>(s: &'a Setup, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "invoke",
        "--snapshot",
        &s.snapshot,
        "--backend",
        s.backend.socket(),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn invoke_from_a_snapshot_matches_a_fresh_run_in_every_restore_mode() {
    let s = setup(20_000);
    let fresh = vmm(
        &s.backend,
        &[
            "run",
            "--guest",
            "wordcount",
            "--backend",
            s.backend.socket(),
            "--",
            "in.txt",
            "fresh.txt",
        ],
    );
    assert!(fresh.status.success(), "{}", fresh.stderr);
    let expected = std::fs::read_to_string(s.store.join("fresh.txt")).unwrap();
    assert_eq!(expected, "20000\n");

    // prefetch twice: the first records the working set, the second uses it.
    for (i, mode) in ["eager", "lazy", "uffd", "prefetch", "prefetch"]
        .iter()
        .enumerate()
    {
        let output = format!("out-{i}-{mode}.txt");
        let run = vmm(
            &s.backend,
            &invoke_args(
                &s,
                &["--restore", mode, "--input", "in.txt", "--output", &output],
            ),
        );
        assert!(run.status.success(), "{mode}: {}", run.stderr);
        assert!(run.stdout.contains("outcome: success"), "{mode}");
        assert!(run.stdout.contains("output (utf8): 20000\n"), "{mode}");
        assert!(run.stdout.contains("timings (ms): "), "{mode}");
        assert_eq!(
            std::fs::read_to_string(s.store.join(&output)).unwrap(),
            expected,
            "{mode}"
        );
        if i == 3 {
            assert!(run.stdout.contains("recording one during this restore"));
            assert!(run.stdout.contains("working set recorded"));
        }
        if i == 4 {
            assert!(!run.stdout.contains("recording"));
            assert!(run.stdout.contains("restore mode Prefetch"));
        }
        // The guest noticed nothing: no failed NEXT, no reset.
        assert!(!run.stderr.contains("next invocation:"), "{mode}");
    }
}

#[test]
fn ten_invocations_from_one_snapshot_at_once() {
    let s = setup(10);
    for i in 0..10 {
        std::fs::write(
            s.store.join(format!("in-{i}.txt")),
            sample_text(1000 + 37 * i),
        )
        .unwrap();
    }
    let inputs: Vec<String> = (0..10).map(|i| format!("in-{i}.txt")).collect();
    let children: Vec<Child> = inputs
        .iter()
        .map(|input| spawn(&invoke_args(&s, &["--input", input])))
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let run = finish(child, &s.backend, &format!("invoke #{i}"));
        assert!(run.status.success(), "#{i}: {}", run.stderr);
        assert!(
            run.stdout
                .contains(&format!("output (utf8): {}\n", 1000 + 37 * i)),
            "#{i}: {}",
            run.stdout
        );
    }
}

#[test]
fn a_wrong_prefetch_hint_still_gives_the_right_answer() {
    let s = setup(3000);
    std::fs::write(s.store.join("other.txt"), sample_text(5)).unwrap();
    for hint in ["other.txt", "no/such/object"] {
        let run = vmm(
            &s.backend,
            &invoke_args(&s, &["--input", "in.txt", "--hint", hint]),
        );
        assert!(run.status.success(), "{hint}: {}", run.stderr);
        assert!(run.stdout.contains("output (utf8): 3000\n"), "{hint}");
    }
    let run = vmm(
        &s.backend,
        &invoke_args(&s, &["--input", "in.txt", "--no-hint"]),
    );
    assert!(run.stdout.contains("output (utf8): 3000\n"));
    let _ = &s.dir;
}

/// The output key reaches the function in its invocation context; the function stores its
/// result there write-behind, and the backend does not store it again.
#[test]
fn write_behind_output_is_durable_when_invoke_reports_success() {
    let s = setup(4321);
    let run = vmm(
        &s.backend,
        &invoke_args(&s, &["--input", "in.txt", "--output", "wb/out.txt"]),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("outcome: success"));
    // Stored by the guest: the backend spent no time storing it.
    assert!(
        run.stdout.contains(" output_store=0.000 "),
        "{}",
        run.stdout
    );
    // Durable when invoke answered: no waiting here.
    assert_eq!(
        std::fs::read_to_string(s.store.join("wb/out.txt")).unwrap(),
        "4321\n"
    );
}

#[test]
fn a_failed_upload_fails_the_invocation_naming_the_object() {
    let s = setup(100);
    // A regular file where the output's directory should be: the upload cannot succeed
    // (tests run as root, so permissions would not stop it).
    std::fs::write(s.store.join("blocker"), "not a directory").unwrap();
    let run = vmm(
        &s.backend,
        &invoke_args(&s, &["--input", "in.txt", "--output", "blocker/out.txt"]),
    );
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("blocker/out.txt"),
        "the error names the object: {}",
        run.stderr
    );
    assert!(!run.stdout.contains("outcome: success"));
}
