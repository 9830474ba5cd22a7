//! Enforces the invariants of ARCHITECTURE.md, written as absences.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that must stay sans-IO, and what they may never depend on or call.
const PURE_CRATES: &[&str] = &["qs-core", "qs-wire"];
const FORBIDDEN_DEPS: &[&str] = &[
    "tokio",
    "async-nats",
    "axum",
    "hyper",
    "redb",
    "mio",
    "socket2",
    "sysinfo",
    "nvml-wrapper",
    "reqwest",
    "libc",
    "nix",
    "rand",
    "getrandom",
];
const FORBIDDEN_CALLS: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "Instant::now",
    "SystemTime::now",
    "tokio::",
    "thread_rng",
    "RandomState",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Direct dependencies of a manifest that are forbidden.
fn forbidden_deps(manifest: &str) -> Vec<String> {
    let doc: toml::Table = toml::from_str(manifest).expect("manifests parse");
    let mut bad = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(deps) = doc.get(section).and_then(|d| d.as_table()) {
            bad.extend(
                deps.keys()
                    .filter(|k| FORBIDDEN_DEPS.contains(&k.as_str()))
                    .cloned(),
            );
        }
    }
    bad
}

/// Lines of Rust source (comments aside) that use a forbidden API.
fn forbidden_calls(source: &str) -> Vec<String> {
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .flat_map(|(i, l)| {
            FORBIDDEN_CALLS
                .iter()
                .filter(move |c| l.contains(*c))
                .map(move |c| format!("line {}: {c}", i + 1))
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The checkers themselves catch what they must (so the real checks below can fail).
#[test]
fn the_checkers_catch_violations() {
    let check_deps = |manifest: &str, expect: &[&str]| assert_eq!(forbidden_deps(manifest), expect);
    check_deps("[dependencies]\nserde = \"1\"\n", &[]);
    check_deps("[dependencies]\ntokio = \"1\"\nserde = \"1\"\n", &["tokio"]);
    check_deps("[dependencies]\nredb = { version = \"4\" }\n", &["redb"]);
    check_deps("[build-dependencies]\naxum = \"0.8\"\n", &["axum"]);
    let check_src = |src: &str, expect: &[&str]| assert_eq!(forbidden_calls(src), expect);
    check_src(
        "fn f() { let t = std::time::Instant::now(); }",
        &["line 1: Instant::now"],
    );
    check_src(
        "use std::fs;\n// std::net in a comment is fine\n",
        &["line 1: std::fs"],
    );
    check_src("let x = SystemTime::now();", &["line 1: SystemTime::now"]);
    check_src("fn pure(now: Time) {}", &[]);
}

/// The core and the wire know nothing of tokio, sockets, files or the clock.
#[test]
fn pure_crates_have_no_io_dependencies_or_calls() {
    for krate in PURE_CRATES {
        let dir = root().join("crates").join(krate);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert_eq!(
            forbidden_deps(&manifest),
            Vec::<String>::new(),
            "{krate}/Cargo.toml"
        );
        for file in rust_files(&dir.join("src")) {
            let src = std::fs::read_to_string(&file).unwrap();
            assert_eq!(
                forbidden_calls(&src),
                Vec::<String>::new(),
                "{}",
                file.display()
            );
        }
    }
}

/// Not even through another crate: the resolved dependency tree of the pure crates is free
/// of IO runtimes and storage engines.
#[test]
fn pure_crates_have_no_io_dependencies_transitively() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for krate in PURE_CRATES {
        let out = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                krate,
            ])
            .current_dir(root())
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            assert!(
                !FORBIDDEN_DEPS.contains(&name),
                "{krate} depends on {name} through:\n{tree}"
            );
        }
    }
}

/// Only the NATS backend knows NATS subjects (the `qs.<fleet>.` prefix).
#[test]
fn only_the_nats_backend_knows_subjects() {
    for file in rust_files(&root().join("crates")) {
        let path = file.display().to_string();
        if path.contains("qs-fabric/src/nats") || path.ends_with("architecture.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&file).unwrap();
        assert!(!src.contains("\"qs.{"), "{path} builds a NATS subject");
        assert!(!src.contains("\"qs.\""), "{path} builds a NATS subject");
    }
}

/// Every Rust file opens with a `//!` line saying what it is for.
#[test]
fn every_file_says_what_it_is_for() {
    for file in rust_files(&root().join("crates")) {
        let src = std::fs::read_to_string(&file).unwrap();
        assert!(
            src.lines().take(5).any(|l| l.starts_with("//!")),
            "{} has no //! line",
            file.display()
        );
    }
}
