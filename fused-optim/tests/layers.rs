//! The library's modules depend on each other without cycles: among the children of every
//! module (the crate's top-level layers, `gpu`'s files, ...), the graph of which one names
//! another is acyclic, so each layer can be read, and changed, knowing only those below it.
//!
//! The graph comes from the sources: every `crate::...` and `super::...` path, in `use`
//! declarations (with their `{...}` groups) and in code, outside comments. A path naming a
//! module's descendant or ancestor is a parent and child talking, not a cycle, and is left out;
//! a path to an item its parent re-exports counts as naming the parent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of the crate by path (`gpu::kernel`), with its source without comments.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                walk(&path, &[prefix, &[stem]].concat(), out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let name = match stem.as_str() {
                    "lib" | "mod" => prefix.join("::"),
                    _ => [prefix, &[stem]].concat().join("::"),
                };
                out.insert(
                    name,
                    strip_comments(&std::fs::read_to_string(&path).unwrap()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    );
    out
}

/// The source without `//` comments (doc links name paths that are not dependencies).
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a source names from `crate` or `super`, use groups expanded, as segments after
/// resolving `super` against `module`.
fn named_paths(module: &str, source: &str) -> Vec<Vec<String>> {
    let tokens: Vec<String> = tokenize(source);
    let here: Vec<String> = module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let start = match tokens[i].as_str() {
            "crate" => Some(Vec::new()),
            "super" => {
                // A `mod.rs` or a file module: `super` is the parent of `module`.
                let mut base = here.clone();
                let mut j = i;
                while j < tokens.len() && tokens[j] == "super" {
                    base.pop();
                    j += 1;
                    if tokens.get(j).map(String::as_str) == Some("::")
                        && tokens.get(j + 1).map(String::as_str) == Some("super")
                    {
                        j += 1;
                    }
                }
                i = j - 1;
                Some(base)
            }
            _ => None,
        };
        if let Some(base) = start {
            if i > 0 && tokens[i - 1] == "::" {
                i += 1;
                continue;
            }
            let (found, next) = tree(&tokens, i + 1, base);
            paths.extend(found);
            i = next;
        } else {
            i += 1;
        }
    }
    paths
}

/// Expands the path continuing at `tokens[at]` (`::a::b`, `::{a, b::c}`) from `base`.
fn tree(tokens: &[String], mut at: usize, mut base: Vec<String>) -> (Vec<Vec<String>>, usize) {
    while tokens.get(at).map(String::as_str) == Some("::") {
        match tokens.get(at + 1).map(String::as_str) {
            Some("{") => {
                let mut paths = Vec::new();
                let mut j = at + 2;
                loop {
                    match tokens.get(j).map(String::as_str) {
                        Some("}") | None => return (paths, j + 1),
                        Some(",") => j += 1,
                        Some(word) if is_word(word) => {
                            let mut inner = base.clone();
                            if word != "self" {
                                inner.push(word.to_owned());
                            }
                            let (found, next) = tree(tokens, j + 1, inner.clone());
                            paths.push(inner);
                            paths.extend(found);
                            j = next;
                            while !matches!(
                                tokens.get(j).map(String::as_str),
                                Some("," | "}") | None
                            ) {
                                j += 1;
                            }
                        }
                        Some(_) => j += 1,
                    }
                }
            }
            Some(word) if is_word(word) => {
                base.push(word.to_owned());
                at += 2;
            }
            _ => break,
        }
    }
    (vec![base], at)
}

fn is_word(token: &str) -> bool {
    token.chars().all(|c| c.is_alphanumeric() || c == '_') && !token.is_empty()
}

/// Words, `::`, and single punctuation, skipping string literals.
fn tokenize(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".to_owned());
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    tokens
}

/// The module a path names: its longest prefix that is a module.
fn resolve(path: &[String], modules: &BTreeMap<String, String>) -> String {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
        .unwrap_or_default()
}

fn segments(module: &str) -> Vec<&str> {
    module.split("::").filter(|s| !s.is_empty()).collect()
}

/// Edges between siblings: `(parent, from, to)` where `from` and `to` are children of
/// `parent` and something in `from` names something in `to`.
fn sibling_edges() -> BTreeSet<(String, String, String)> {
    let modules = modules();
    let mut edges = BTreeSet::new();
    for (module, source) in &modules {
        for path in named_paths(module, source) {
            let target = resolve(&path, &modules);
            let (a, b) = (segments(module), segments(&target));
            let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            if common == a.len() || common == b.len() {
                continue;
            }
            edges.insert((
                a[..common].join("::"),
                a[..=common].join("::"),
                b[..=common].join("::"),
            ));
        }
    }
    edges
}

/// A cycle among `edges` (from, to), if there is one, as the modules on it.
fn find_cycle(edges: &[(String, String)]) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &[(String, String)],
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(cycle) = visit(to, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .iter()
        .find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_depends_on_itself_through_its_siblings() {
    let edges = sibling_edges();
    let parents: BTreeSet<&String> = edges.iter().map(|(parent, _, _)| parent).collect();
    let mut cycles = Vec::new();
    for parent in parents {
        let among: Vec<(String, String)> = edges
            .iter()
            .filter(|(p, _, _)| p == parent)
            .map(|(_, from, to)| (from.clone(), to.clone()))
            .collect();
        if let Some(cycle) = find_cycle(&among) {
            cycles.push(cycle.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

/// The checker sees what it must: a known edge in each direction that exists.
#[test]
fn the_graph_has_the_layers_edges() {
    let edges = sibling_edges();
    for (from, to) in [
        ("gpu", "rule"),
        ("optim", "gpu"),
        ("rules", "rule"),
        ("format", "error"),
    ] {
        assert!(
            edges.iter().any(|(_, f, t)| f == from && t == to),
            "no edge {from} -> {to} in {edges:#?}"
        );
    }
}

/// The crate's top-level modules in the order lib.rs and the README list them: each names
/// only those before it.
#[test]
fn the_layers_depend_only_on_those_before_them() {
    const LAYERS: &[&str] = &[
        "error",
        "format",
        "checkpoint",
        "guard",
        "rule",
        "rules",
        "gpu",
        "optim",
        "baseline",
        "tooling",
    ];
    let rank = |module: &str| {
        LAYERS
            .iter()
            .position(|layer| *layer == module)
            .unwrap_or_else(|| panic!("{module} is not in LAYERS"))
    };
    let upward: Vec<String> = sibling_edges()
        .into_iter()
        .filter(|(parent, from, to)| parent.is_empty() && rank(from) <= rank(to))
        .map(|(_, from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(upward.is_empty(), "layers naming later ones: {upward:#?}");
}
