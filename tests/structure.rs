//! The structural invariants ARCHITECTURE.md promises, checked on the source: which module may
//! import which, and no import circle anywhere. A module is a file (`proxy/record.rs` is
//! `proxy/record`, `config/mod.rs` is `config`); an import is a `use` or a path through
//! `crate::`, `super::` or a child of the file's own module. Unit tests are left out. Also the
//! build profiles: what ships and what profiles.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("/")
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && !path.to_string_lossy().ends_with("_tests.rs")
        {
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests sit at the end of a file, after `#[cfg(test)]`.
            let code = text.split("#[cfg(test)]").next().unwrap().to_string();
            out.push((module_of(path.strip_prefix(root).unwrap()), code));
        }
    }
}

/// Every path a `use` tree names, with its prefix: `a::{b, c::{d, e}}` gives `a::b`, `a::c::d`,
/// `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::");
        let Some(close) = tree.rfind('}') else {
            return;
        };
        let inner = &tree[open + 1..close];
        let prefix = join(prefix, head);
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&prefix, &inner[start..], out);
    } else if !tree.is_empty() {
        let item = tree.split(" as ").next().unwrap().trim();
        out.push(join(prefix, item));
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// The paths a file imports, made absolute (`crate::` dropped, `super::` and own children
/// resolved against `module`).
fn imports(module: &str, code: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let mut paths = Vec::new();
    // Comments are not code.
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    // `use` items (`pub use`, `pub(crate) use` too), which may span lines.
    for (at, _) in code.match_indices("use ") {
        let line_start = code[..at].rfind('\n').map_or(0, |i| i + 1);
        let head = code[line_start..at].trim();
        if !(head.is_empty() || head.starts_with("pub")) {
            continue;
        }
        if let Some(end) = code[at..].find(';') {
            expand("", &code[at + 4..at + end], &mut paths);
        }
    }
    // Paths written in place: `crate::a::b::c` and `super::x::y`.
    for anchor in ["crate::", "super::"] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            rest = &rest[at..];
            let len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                paths.push(rest[..len].trim_end_matches(':').to_string());
            }
            rest = &rest[len.max(1)..];
        }
    }
    let parent = module.rsplit_once('/').map_or("", |(p, _)| p);
    paths
        .into_iter()
        .filter_map(|p| {
            let segments: Vec<&str> = p.split("::").collect();
            let absolute: Vec<&str> = match segments[0] {
                "crate" => segments[1..].to_vec(),
                "super" => parent
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .chain(segments[1..].iter().copied())
                    .collect(),
                "self" => module
                    .split('/')
                    .chain(segments[1..].iter().copied())
                    .collect(),
                child if modules.contains(&join_slash(module, child)) => {
                    module.split('/').chain(segments.iter().copied()).collect()
                }
                _ => return None,
            };
            (1..=absolute.len())
                .rev()
                .map(|n| absolute[..n].join("/"))
                .find(|m| modules.contains(m))
        })
        .filter(|m| m != module)
        .collect()
}

fn join_slash(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    files
        .iter()
        .map(|(m, code)| (m.clone(), imports(m, code, &modules).into_iter().collect()))
        .collect()
}

/// Groups of modules that import each other, directly or not (Tarjan).
fn circles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.out.push(group);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn under(module: &str, dir: &str) -> bool {
    module == dir || module.starts_with(&format!("{dir}/"))
}

/// Imports from modules under `from` to modules under `to`, as `a -> b` lines.
fn imports_between(g: &Graph, from: &str, to: &[&str]) -> Vec<String> {
    g.iter()
        .filter(|(m, _)| under(m, from))
        .flat_map(|(m, deps)| {
            deps.iter()
                .filter(|d| to.iter().any(|t| under(d, t)))
                .map(move |d| format!("{m} -> {d}"))
        })
        .collect()
}

/// The area a module belongs to: its first segment (`proxy` for `proxy/record`).
fn area(module: &str) -> &str {
    module.split('/').next().unwrap()
}

/// Across areas imports go one way. Within one area (the files of `proxy/`, a `mod.rs` and its
/// children) files may use each other.
#[test]
fn no_area_imports_itself_through_others() {
    let g = graph();
    assert!(g.len() > 30, "the source tree was not read: {:?}", g.keys());
    let found: Vec<Vec<String>> = circles(&g)
        .into_iter()
        .filter(|group| group.iter().any(|m| area(m) != area(&group[0])))
        .collect();
    let shown: Vec<String> = found
        .iter()
        .map(|group| {
            let edges: Vec<String> = group
                .iter()
                .flat_map(|m| {
                    g[m].iter()
                        .filter(|d| group.contains(d))
                        .map(move |d| format!("  {m} -> {d}"))
                })
                .collect();
            format!("{}\n{}", group.join(", "), edges.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "import circles:\n{}", shown.join("\n\n"));
}

#[test]
fn config_imports_no_feature_module() {
    let g = graph();
    let outside: Vec<String> = g
        .iter()
        .filter(|(m, _)| under(m, "config"))
        .flat_map(|(m, deps)| {
            deps.iter()
                .filter(|d| !under(d, "config"))
                .map(move |d| format!("{m} -> {d}"))
        })
        .collect();
    assert!(outside.is_empty(), "config imports {outside:?}");
}

/// The parsers fill the call record's data (`ResponseRecord`, `RequestParams`), so they sit
/// beneath it.
#[test]
fn the_parsers_know_nothing_of_the_proxy_or_the_call() {
    let g = graph();
    let found = imports_between(&g, "format", &["proxy", "server", "call"]);
    assert!(found.is_empty(), "format imports {found:?}");
}

/// What each API's request says is read beside its response extractor in `format/`: the
/// proxy and the content capture ask it and name no API themselves.
#[test]
fn only_format_tells_the_wire_apis_apart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let mut found = Vec::new();
    for (module, code) in &files {
        if !(under(module, "proxy") || module == "trace/capture") {
            continue;
        }
        // Comments are not code.
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        for (at, _) in code.match_indices("WireFormat::") {
            let rest = &code[at + "WireFormat::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name != "Passthrough" {
                found.push(format!("{module}: WireFormat::{name}"));
            }
        }
    }
    assert!(files.len() > 30, "the source tree was not read");
    assert!(
        found.is_empty(),
        "per-API knowledge outside format/: {found:?}"
    );
}

#[test]
fn the_call_record_and_sinks_are_data_the_features_can_import() {
    let g = graph();
    let features = [
        "call/recorder",
        "metrics",
        "store",
        "export",
        "cost",
        "proxy",
    ];
    let mut found = imports_between(&g, "call/record", &features);
    found.extend(imports_between(&g, "call/sink", &features));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn the_checker_sees_imports_of_every_kind() {
    let modules: BTreeSet<String> = ["a", "a/b", "a/b/c", "d", "d/e"]
        .into_iter()
        .map(String::from)
        .collect();
    let code = "use crate::{a::b::{c::X, Y}, d};\nfn f() { crate::d::e::g(); super::e::h(); }\n";
    let mut found = imports("d/x", code, &modules);
    found.sort();
    assert_eq!(found, ["a/b", "a/b/c", "d", "d/e", "d/e"]);
    assert_eq!(imports("d", "pub use e::Z;", &modules), ["d/e"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(circles(&g), vec![vec!["a", "b", "c"]]);
}

/// The shipped binary is stripped and carries no debug info; the profiling profile keeps
/// symbols and line tables; the benchmark scripts can build and run it.
#[test]
fn release_ships_stripped_and_profiling_keeps_symbols() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let profile = |name: &str| manifest["profile"][name].as_table().unwrap().clone();
    let release = profile("release");
    assert_eq!(release.get("strip"), Some(&toml::Value::Boolean(true)));
    assert!(
        matches!(
            release.get("debug"),
            None | Some(toml::Value::Boolean(false)) | Some(toml::Value::Integer(0))
        ),
        "no debug info or line tables in release: {release:?}"
    );
    let profiling = profile("profiling");
    assert_eq!(profiling["inherits"].as_str(), Some("release"));
    assert_eq!(profiling["strip"], toml::Value::Boolean(false));
    assert!(profiling.contains_key("debug"));
    assert_ne!(profiling["debug"], toml::Value::Boolean(false));
    for script in ["load-tests/run.sh", "load-tests/soak.sh"] {
        let text = std::fs::read_to_string(root.join(script)).unwrap();
        assert!(
            text.contains("--profiling) PROFILE=profiling")
                && text.contains("cargo build --profile \"$PROFILE\""),
            "{script} cannot build the profiling profile"
        );
    }
}
