//! Enforces the invariants of ARCHITECTURE.md, written as absences. Sources are parsed (syn),
//! so a name in a comment or a string never counts, and `use std::{fs, net}` counts as both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use syn::visit::Visit;

/// Crates that must stay sans-IO, and what they may never depend on or call.
const PURE_CRATES: &[&str] = &["qs-core", "qs-wire", "qs-sim"];
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
/// Paths a pure crate never names (a path matches when it starts with one, or, for the ones
/// that start with a type, contains it).
const FORBIDDEN_PATHS: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "tokio",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "RandomState",
];
/// What the agent never does itself, because the core decides it: which services to
/// reconcile (the core's `Notice` makes those inputs), the health verdict, the judgement of a
/// singleton's claim, the plan of a service.
const AGENT_NEVER_NAMES: &[&str] = &[
    "Input::Reconcile",
    "Input::ReconcileService",
    "ExitOutcome::HealthFailed",
    "judge_claim",
    "health::judge",
    "plan::plan",
];
/// What writes or moves files: in the agent, only the state directory does (and the
/// executor, for its log files).
const FILE_WRITES: &[&str] = &[
    "std::fs::write",
    "std::fs::rename",
    "std::fs::remove_file",
    "std::fs::File::create",
    "std::fs::OpenOptions",
    "fs::write",
    "fs::rename",
];
/// Unbounded queues, anywhere.
const UNBOUNDED: &[&str] = &[
    "unbounded_channel",
    "std::sync::mpsc::channel",
    "mpsc::unbounded",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
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

/// Every path a source names, as `a::b::c`, with its line: paths in expressions and types,
/// and each leaf of a `use` tree spelled out in full.
#[derive(Default)]
struct Paths {
    found: Vec<(String, usize)>,
    /// String literals (for the subject check).
    strings: Vec<(String, usize)>,
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let text: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = p
            .segments
            .first()
            .map_or(0, |s| s.ident.span().start().line);
        self.found.push((text.join("::"), line));
        syn::visit::visit_path(self, p);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        flatten(&u.tree, String::new(), &mut leaves);
        let line = u.use_token.span.start().line;
        self.found.extend(leaves.into_iter().map(|l| (l, line)));
    }

    /// Test modules are not shipped: what they do is not checked.
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let test_only = m.attrs.iter().any(|a| {
            a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
        });
        if !test_only {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_lit_str(&mut self, s: &'ast syn::LitStr) {
        self.strings.push((s.value(), s.span().start().line));
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        syn::visit::visit_macro(self, m);
        // Paths inside macro calls (format!, assert!, select!) are tokens: read them as
        // expressions where they parse.
        if let Ok(args) = m.parse_body_with(
            syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
        ) {
            for e in &args {
                self.visit_expr(e);
            }
        }
    }
}

fn flatten(tree: &syn::UseTree, prefix: String, out: &mut Vec<String>) {
    let join = |name: String| {
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}::{name}")
        }
    };
    match tree {
        syn::UseTree::Path(p) => flatten(&p.tree, join(p.ident.to_string()), out),
        syn::UseTree::Name(n) => out.push(join(n.ident.to_string())),
        syn::UseTree::Rename(r) => out.push(join(r.ident.to_string())),
        syn::UseTree::Glob(_) => out.push(join("*".into())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix.clone(), out);
            }
        }
    }
}

fn paths_of(source: &str) -> Paths {
    let file = syn::parse_file(source).expect("sources parse");
    let mut paths = Paths::default();
    paths.visit_file(&file);
    paths
}

/// Whether `path` names `pattern`: it starts with it (on a segment boundary), or the pattern
/// is a `Type::item` or a bare name found anywhere in it.
fn names(path: &str, pattern: &str) -> bool {
    let on_boundary = |i: usize| {
        let before = i == 0 || path[..i].ends_with("::");
        let after =
            path[i + pattern.len()..].is_empty() || path[i + pattern.len()..].starts_with("::");
        before && after
    };
    path.match_indices(pattern).any(|(i, _)| on_boundary(i))
}

/// The lines of a source that name one of `patterns`.
fn violations(source: &str, patterns: &[&str]) -> Vec<String> {
    paths_of(source)
        .found
        .iter()
        .flat_map(|(path, line)| {
            patterns
                .iter()
                .filter(|p| names(path, p))
                .map(move |p| format!("line {line}: {path} ({p})"))
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

/// The top-level module a source file of `src` belongs to (`None`: the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (!["lib", "main"].contains(&name.as_str())).then_some(name)
}

/// Imports between the top-level modules of one crate: `crate::x` named in a file of module
/// `m` is an arrow m → x. A module and its own submodules are one; the crate root (its
/// re-exports) is not a module here.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let Some(from) = top_module(src, &file) else {
            continue;
        };
        let source = std::fs::read_to_string(&file).unwrap();
        let arrows = graph.entry(from.clone()).or_default();
        for (path, _) in paths_of(&source).found {
            let mut segments = path.split("::");
            if segments.next() == Some("crate")
                && let Some(to) = segments.next()
                && to != from
                && src.join(format!("{to}.rs")).exists() | src.join(to).is_dir()
            {
                arrows.insert(to.to_string());
            }
        }
    }
    graph
}

/// A circle of imports, if the graph has one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut circle = stack[i..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The checkers themselves catch what they must (so the real checks below can fail).
#[test]
fn the_checkers_catch_violations() {
    let check_deps = |manifest: &str, expect: &[&str]| assert_eq!(forbidden_deps(manifest), expect);
    check_deps("[dependencies]\nserde = \"1\"\n", &[]);
    check_deps("[dependencies]\ntokio = \"1\"\nserde = \"1\"\n", &["tokio"]);
    check_deps("[dependencies]\nredb = { version = \"4\" }\n", &["redb"]);
    check_deps("[build-dependencies]\naxum = \"0.8\"\n", &["axum"]);
    let check = |src: &str, expect: &[&str]| {
        let got: Vec<String> = violations(src, FORBIDDEN_PATHS)
            .into_iter()
            .map(|v| v.split(" (").next().unwrap().to_string())
            .collect();
        assert_eq!(got, expect, "{src}");
    };
    check(
        "fn f() { let t = std::time::Instant::now(); }",
        &["line 1: std::time::Instant::now"],
    );
    check(
        "use std::{fs, net::TcpStream};",
        &["line 1: std::fs", "line 1: std::net::TcpStream"],
    );
    check("// std::net in a comment is fine\nfn f() {}", &[]);
    check("fn f() { let s = \"std::fs\"; }", &[]);
    check(
        "fn f() { let x = SystemTime::now(); }",
        &["line 1: SystemTime::now"],
    );
    check(
        "fn f() { println!(\"{}\", Instant::now()); }",
        &["line 1: Instant::now"],
    );
    check("fn pure(now: Time) {}", &[]);
    check("use tokio_util::x;", &[]);
    assert_eq!(
        violations(
            "fn f() { let (a, b) = tokio::sync::mpsc::unbounded_channel::<u8>(); }",
            UNBOUNDED
        )
        .len(),
        1
    );
    assert_eq!(
        violations("fn f() { mpsc::channel::<u8>(8); }", UNBOUNDED).len(),
        0
    );
    assert_eq!(
        violations(
            "fn f() { n.handle(Input::Reconcile, t, r); }",
            AGENT_NEVER_NAMES
        )
        .len(),
        1
    );
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(
        find_circle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// The core, the wire and the simulator know nothing of tokio, sockets, files or the clock.
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
                violations(&src, FORBIDDEN_PATHS),
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

/// No decision is made in the agent: it never names what only the core decides.
#[test]
fn the_agent_makes_no_decision() {
    for file in rust_files(&root().join("crates/qs-agent/src")) {
        let src = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            violations(&src, AGENT_NEVER_NAMES),
            Vec::<String>::new(),
            "{} decides what the core decides",
            file.display()
        );
    }
}

/// No queue is unbounded: every channel has a capacity.
#[test]
fn no_queue_is_unbounded() {
    for file in rust_files(&root().join("crates")) {
        let src = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            violations(&src, UNBOUNDED),
            Vec::<String>::new(),
            "{}",
            file.display()
        );
    }
}

/// No two modules of a crate import each other, directly or through others.
#[test]
fn no_import_circles() {
    for krate in crates() {
        let src = root().join("crates").join(&krate).join("src");
        let graph = module_graph(&src);
        assert_eq!(find_circle(&graph), None, "{krate} imports in a circle");
    }
}

/// No state file is written but through the `StateDir` (the executor's logs aside, and the
/// simulated GPU's memory: a device double that the runtime processes write too).
#[test]
fn only_the_state_dir_writes_state() {
    for file in rust_files(&root().join("crates/qs-agent/src")) {
        if file.ends_with("exec.rs") || file.ends_with("simgpu.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            violations(&src, FILE_WRITES),
            Vec::<String>::new(),
            "{} writes a file itself",
            file.display()
        );
    }
}

/// The section of ARCHITECTURE.md under `heading`, up to the next heading of its level.
fn doc_section(heading: &str) -> String {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let level = heading.split(' ').next().unwrap();
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has {heading}"));
    let rest = &doc[start + heading.len() + 2..];
    let end = rest.find(&format!("\n{level} ")).unwrap_or(rest.len());
    rest[..end].to_string()
}

/// Rows of a markdown table: cells, trimmed.
fn table_rows(section: &str) -> Vec<Vec<String>> {
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

/// The layer table says what each crate depends on, as its manifest does.
#[test]
fn the_layer_table_is_the_manifests() {
    let rows = table_rows(&doc_section("## Layers"));
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        let deps = row[2]
            .split(", ")
            .filter(|d| d.starts_with("qs-"))
            .map(str::to_string)
            .collect();
        documented.insert(row[0].clone(), deps);
    }
    let mut actual = BTreeMap::new();
    for krate in crates() {
        let manifest =
            std::fs::read_to_string(root().join("crates").join(&krate).join("Cargo.toml")).unwrap();
        let doc: toml::Table = toml::from_str(&manifest).unwrap();
        let deps: BTreeSet<String> = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| d.keys().filter(|k| k.starts_with("qs-")).cloned().collect())
            .unwrap_or_default();
        actual.insert(krate, deps);
    }
    assert_eq!(documented, actual);
}

/// The wire-contract table lists exactly the topics the code builds (`Topic`'s constructors
/// of concrete topics, read from the source).
#[test]
fn the_wire_contract_is_the_topics_the_code_builds() {
    let documented: BTreeSet<String> = table_rows(&doc_section("## The wire contract"))
        .into_iter()
        .map(|row| row[0].replace("<node>", "{node}"))
        .collect();
    let src = std::fs::read_to_string(root().join("crates/qs-fabric/src/topic.rs")).unwrap();
    let built: BTreeSet<String> = paths_of(&src)
        .strings
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| s.contains('.') && !s.contains('*') && !s.contains('>') && !s.contains(' '))
        .filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-{}".contains(c))
        })
        .collect();
    assert_eq!(documented, built);
}

/// The code map names every source file of every crate, in that crate's section.
#[test]
fn the_code_map_names_every_file() {
    for krate in crates() {
        let section = doc_section(&format!("### `crates/{krate}`"));
        let dir = root().join("crates").join(&krate);
        for file in rust_files(&dir) {
            let rel = file.strip_prefix(&dir).unwrap().display().to_string();
            if rel.starts_with("target") {
                continue;
            }
            assert!(
                section.contains(&format!("`{rel}`")),
                "ARCHITECTURE.md's section on crates/{krate} does not name {rel}"
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
        for (s, line) in paths_of(&src).strings {
            assert!(
                !s.starts_with("qs.{") && s != "qs.",
                "{path}:{line} builds a NATS subject"
            );
        }
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
