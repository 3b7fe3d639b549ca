//! The invariants of ARCHITECTURE.md that a machine can check: which crate
//! may depend on what, that SQL stays in the store module, and that every
//! source file says what it owns.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Normal (non-dev) dependencies of a package, as `cargo tree` lists them.
fn deps(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

#[track_caller]
fn assert_not_in(package: &str, forbidden: &[&str]) {
    let deps = deps(package);
    for f in forbidden {
        assert!(
            !deps.iter().any(|d| d == f),
            "{package} must not depend on {f}"
        );
    }
}

#[test]
fn crate_boundaries_hold() {
    assert_not_in("licensing", &["axum", "hyper", "rusqlite", "tokio"]);
    // The pair protocol is pure: no runtime, no sockets, no SQL, no TLS.
    assert_not_in(
        "pair-core",
        &[
            "axum",
            "hyper",
            "rusqlite",
            "tokio",
            "rustls",
            "ring",
            "licensing",
        ],
    );
    assert_not_in("plugins", &["axum", "rusqlite", "licensing", "gateway"]);
    // The device agent serves its panel with axum; the device side still
    // talks to gateways only over the HTTP API.
    assert_not_in("mfd-sim", &["gateway", "plugins", "rusqlite", "pair-core"]);
    for package in ["licensing", "pair-core", "plugins", "gateway", "mfd-sim"] {
        assert_not_in(
            package,
            &[
                "aws-lc-rs",
                "aws-lc-sys",
                "openssl",
                "openssl-sys",
                "native-tls",
            ],
        );
    }
    assert!(deps("gateway").iter().any(|d| d == "rusqlite"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == "fixtures")
            {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sql_stays_in_the_store_module() {
    let mut files = Vec::new();
    rust_files(&root().join("gateway/src"), &mut files);
    for file in files {
        if file.components().any(|c| c.as_os_str() == "store") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in [
            "rusqlite::",
            "execute(\"",
            "SELECT ",
            "INSERT INTO",
            "DELETE FROM",
            "UPDATE ",
        ] {
            assert!(
                !text.contains(needle),
                "{} contains `{needle}`: SQL belongs in gateway/src/store",
                file.display()
            );
        }
    }
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    for krate in [
        "licensing",
        "pair-core",
        "plugins",
        "gateway",
        "mfd-sim",
        "tests",
        "xtask",
    ] {
        rust_files(&root().join(krate), &mut files);
    }
    assert!(files.len() > 40, "found the sources");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            first.starts_with("//!"),
            "{} must start with a `//!` line saying what it owns",
            file.display()
        );
    }
}

/// `pair-core` reads no clock and opens no socket: time and messages are
/// its inputs, so the model checker and the real link drive the same code.
#[test]
fn the_pair_protocol_reads_no_clock_and_opens_no_socket() {
    let mut files = Vec::new();
    rust_files(&root().join("pair-core/src"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let text = code_only(&std::fs::read_to_string(&file).unwrap());
        for needle in [
            "SystemTime::now",
            "Instant::now",
            "Utc::now",
            "std::net",
            "std::fs",
            "std::thread",
            "tokio",
        ] {
            assert!(
                !text.contains(needle),
                "{} uses `{needle}`: pair-core takes time and I/O as inputs",
                file.display()
            );
        }
    }
}

// ----- module layers -------------------------------------------------------

/// The gateway's layers, bottom to top, as `gateway/src/lib.rs` lists them.
/// A module may use modules of its own layer or below, never above.
const GATEWAY_LAYERS: &[(&str, &[&str])] = &[
    (
        "values",
        &[
            "clock",
            "logging",
            "manifest",
            "names",
            "paths",
            "proxy_protocol",
            "role",
            "security",
            "settings",
        ],
    ),
    ("storage", &["commit", "spool", "store"]),
    (
        "core",
        &[
            "admission",
            "changes",
            "core",
            "data",
            "declared",
            "license",
            "metrics",
            "ownership",
            "peer_ack",
            "site",
        ],
    ),
    (
        "adapters",
        &["admin", "pair", "rate", "systemd", "tls", "web", "workers"],
    ),
    ("root", &["cli", "instance"]),
];

/// The text without comments, and without the unit-test module at the end
/// of a file (tests may reach across modules to set things up).
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A crate's modules (as paths from the crate root) and, for each, the
/// modules it refers to through `crate::`, `super::` and `self::` paths.
struct ModuleGraph {
    modules: Vec<Vec<String>>,
    uses: Vec<(Vec<String>, Vec<String>)>,
}

fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// Expands `a::{b, c::{d}}` into `a::b`, `a::c::d`.
fn expand_use(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = if head.is_empty() {
            prefix.to_owned()
        } else if prefix.is_empty() {
            head.to_owned()
        } else {
            format!("{prefix}::{head}")
        };
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&inner[start..], &base, out);
    } else if !tree.is_empty() {
        let item = tree.split(" as ").next().unwrap().trim();
        out.push(if prefix.is_empty() {
            item.to_owned()
        } else {
            format!("{prefix}::{item}")
        });
    }
}

/// Every path starting with `crate::`, `super::` or `self::` in `code`,
/// with `use` groups expanded.
fn relative_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let is_word_start = i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if is_word_start {
            let tree = after[..end].trim();
            if tree.starts_with("crate::")
                || tree.starts_with("super::")
                || tree.starts_with("self::")
            {
                expand_use(tree, "", &mut paths);
            }
        }
        rest = &after[end.min(after.len())..];
    }
    // Inline paths such as `crate::web::app(..)` or `impl From<X> for crate::y::Z`.
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            from = at + root.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            paths.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    paths
}

/// Resolves a relative path used in module `from` to the module it names.
fn resolve(path: &str, from: &[String], modules: &[Vec<String>]) -> Option<Vec<String>> {
    let mut segs = path.split("::").filter(|s| !s.is_empty());
    let mut target: Vec<String> = match segs.next()? {
        "crate" => Vec::new(),
        "self" => from.to_vec(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    let mut rest: Vec<&str> = segs.collect();
    while rest.first() == Some(&"super") {
        target.pop();
        rest.remove(0);
    }
    // The longest prefix that is a module is what the path depends on.
    let mut best = target.clone();
    for seg in rest {
        target.push(seg.to_owned());
        if modules.contains(&target) {
            best = target.clone();
        } else {
            break;
        }
    }
    Some(best)
}

fn module_graph(src: &Path) -> ModuleGraph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "bin"))
        .collect();
    let modules: Vec<Vec<String>> = files.iter().map(|f| module_path(src, f)).collect();
    let mut uses = Vec::new();
    for (file, module) in files.iter().zip(&modules) {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for path in relative_paths(&code) {
            if let Some(target) = resolve(&path, module, &modules) {
                uses.push((module.clone(), target));
            }
        }
    }
    ModuleGraph { modules, uses }
}

/// Edges between sibling modules: `a -> b` when something inside `a`
/// (a child of `parent`) uses something inside `b` (another child).
fn sibling_edges(graph: &ModuleGraph, parent: &[String]) -> Vec<(String, String)> {
    let child = |m: &[String]| -> Option<String> {
        (m.len() > parent.len() && m.starts_with(parent)).then(|| m[parent.len()].clone())
    };
    let mut edges: Vec<(String, String)> = graph
        .uses
        .iter()
        .filter_map(|(from, to)| match (child(from), child(to)) {
            (Some(a), Some(b)) if a != b => Some((a, b)),
            _ => None,
        })
        .collect();
    edges.sort();
    edges.dedup();
    edges
}

fn find_cycle(edges: &[(String, String)]) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &[(String, String)],
        stack: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.iter().any(|n| n == node) {
            return None;
        }
        stack.push(node.to_owned());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(c) = visit(to, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.push(node.to_owned());
        None
    }
    let mut done = Vec::new();
    for (from, _) in edges {
        if let Some(c) = visit(from, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn assert_no_sibling_loops(krate: &str) {
    let graph = module_graph(&root().join(krate).join("src"));
    let mut parents: Vec<Vec<String>> = graph.modules.clone();
    parents.push(Vec::new());
    parents.sort();
    parents.dedup();
    for parent in parents {
        let edges = sibling_edges(&graph, &parent);
        if let Some(cycle) = find_cycle(&edges) {
            panic!(
                "{krate}: modules under `{}` use each other in a loop: {}",
                if parent.is_empty() {
                    "crate".to_owned()
                } else {
                    parent.join("::")
                },
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn no_crate_has_modules_that_use_each_other_in_a_loop() {
    for krate in ["licensing", "pair-core", "plugins", "gateway", "mfd-sim"] {
        assert_no_sibling_loops(krate);
    }
}

#[test]
fn no_gateway_module_uses_a_module_of_a_higher_layer() {
    let src = root().join("gateway/src");
    let graph = module_graph(&src);
    let layer_of = |top: &str| {
        GATEWAY_LAYERS
            .iter()
            .position(|(_, mods)| mods.contains(&top))
    };
    // Every top-level module has a layer, so a new module must choose one.
    for m in graph.modules.iter().filter(|m| m.len() == 1) {
        assert!(
            layer_of(&m[0]).is_some(),
            "gateway module `{}` is in no layer: add it to GATEWAY_LAYERS and to the list in lib.rs",
            m[0]
        );
    }
    let mut seen_upward = false;
    for (from, to) in &graph.uses {
        let (Some(f), Some(t)) = (from.first(), to.first()) else {
            continue;
        };
        let (lf, lt) = (layer_of(f).unwrap(), layer_of(t).unwrap());
        assert!(
            lt <= lf,
            "gateway::{} ({}) uses gateway::{} ({}): a module never uses one of a higher layer",
            from.join("::"),
            GATEWAY_LAYERS[lf].0,
            to.join("::"),
            GATEWAY_LAYERS[lt].0
        );
        seen_upward |= lt < lf;
    }
    assert!(
        seen_upward,
        "the check saw no use across layers: the parser is broken"
    );
}

/// The checker itself: a loop and an upward use are found.
#[test]
fn the_layer_checker_finds_loops_and_expands_use_groups() {
    let mut out = Vec::new();
    expand_use(
        "crate::{admin, web::{self, serve::X}, core::Core as C}",
        "",
        &mut out,
    );
    assert_eq!(
        out,
        [
            "crate::admin",
            "crate::web::self",
            "crate::web::serve::X",
            "crate::core::Core"
        ]
    );
    let paths =
        relative_paths("impl From<A> for crate::web::error::ApiError {}\n let x = super::y::z();");
    assert!(
        paths.contains(&"crate::web::error::ApiError".to_owned()),
        "{paths:?}"
    );
    assert!(paths.contains(&"super::y::z".to_owned()), "{paths:?}");
    let edges = vec![
        ("a".to_owned(), "b".to_owned()),
        ("b".to_owned(), "c".to_owned()),
        ("c".to_owned(), "a".to_owned()),
    ];
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
    assert!(find_cycle(&edges[..2]).is_none());
}
