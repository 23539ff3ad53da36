//! The library's modules depend on each other without cycles: among the children of every
//! module (the crate's top-level layers, `gpu`'s files, ...), the graph of which one names
//! another is acyclic, so each layer can be read, and changed, knowing only those below it;
//! and the top-level layers name only those before them in the order lib.rs documents.
//!
//! The graph comes from the sources: every `crate::...` and `super::...` path (`super` chains
//! and inline modules resolved, `use` groups expanded), outside comments and strings. A path
//! naming a module's descendant or ancestor is a parent and child talking, not a cycle, and
//! is left out; a path to an item the crate root re-exports (`crate::Error`) counts as naming
//! the module it comes from. Unit tests (`#[cfg(test)] mod` bodies) may reach anywhere and
//! are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of the crate by path (`gpu::kernel`), with its source's tokens.
fn modules() -> BTreeMap<String, Vec<String>> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, Vec<String>>) {
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
                out.insert(name, tokenize(&std::fs::read_to_string(&path).unwrap()));
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

fn segments(module: &str) -> Vec<String> {
    module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every path the tokens of `module` name from `crate` or `super`, use groups expanded, as
/// segments from the crate root.
fn named_paths(module: &str, tokens: &[String]) -> Vec<Vec<String>> {
    let token = |i: usize| tokens.get(i).map(String::as_str);
    let mut paths = Vec::new();
    // Inline modules open here: their names and the brace depth their body is at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match token(i) {
            Some("{") => depth += 1,
            Some("}") => {
                depth -= 1;
                if inline.last().is_some_and(|(_, at)| *at > depth) {
                    inline.pop();
                }
            }
            Some("#") if tokens[i..].starts_with(&cfg_test()) && token(i + 9) == Some("{") => {
                // A unit test module's body: skip to its closing brace.
                let open = (i..tokens.len()).find(|&j| tokens[j] == "{").unwrap();
                let mut level = 0;
                let mut j = open;
                loop {
                    match token(j) {
                        Some("{") => level += 1,
                        Some("}") => {
                            level -= 1;
                            if level == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                i = j;
            }
            Some("mod") if token(i + 2) == Some("{") => {
                inline.push((tokens[i + 1].clone(), depth + 1));
            }
            Some(start @ ("crate" | "super")) if i == 0 || tokens[i - 1] != "::" => {
                let mut base = match start {
                    "crate" => Vec::new(),
                    _ => {
                        let mut here = segments(module);
                        here.extend(inline.iter().map(|(name, _)| name.clone()));
                        here
                    }
                };
                let mut last = i;
                if start == "super" {
                    base.pop();
                    while token(last + 1) == Some("::") && token(last + 2) == Some("super") {
                        base.pop();
                        last += 2;
                    }
                }
                let (found, next) = tree(tokens, last + 1, base);
                paths.extend(found);
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    paths
}

/// The tokens of `#[cfg(test)] mod`.
fn cfg_test() -> Vec<String> {
    ["#", "[", "cfg", "(", "test", ")", "]", "mod"]
        .map(str::to_owned)
        .to_vec()
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
                            let (found, next) = tree(tokens, j + 1, inner);
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

/// Words, `::`, and single punctuation, skipping comments and string literals.
fn tokenize(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && at(i + 1) == Some('/')) {
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' && at(i + 2) == Some('\'') {
            // A char literal such as '"' or '{' (a lifetime has no closing quote).
            i += 3;
        } else if c == '\'' && at(i + 1) == Some('\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && at(i + 1) == Some(':') {
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

/// The module a path names: its longest prefix that is a module, or for an item the crate
/// root re-exports, the module it comes from.
fn resolve(
    path: &[String],
    modules: &BTreeMap<String, Vec<String>>,
    reexports: &BTreeMap<String, String>,
) -> String {
    let found = (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
        .unwrap_or_default();
    match (found.is_empty(), path.first()) {
        (true, Some(name)) => reexports.get(name).cloned().unwrap_or_default(),
        _ => found,
    }
}

/// The names lib.rs re-exports with `pub use`, each with the module it comes from.
fn root_reexports(modules: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, String> {
    let tokens = &modules[""];
    let mut names = BTreeMap::new();
    for (i, window) in tokens.windows(2).enumerate() {
        if window[0] == "pub" && window[1] == "use" && modules.contains_key(&tokens[i + 2]) {
            let base = vec![tokens[i + 2].clone()];
            for path in tree(tokens, i + 3, base).0 {
                if let (Some(first), Some(last)) = (path.first(), path.last()) {
                    names.insert(last.clone(), first.clone());
                }
            }
        }
    }
    names
}

/// Edges between siblings: `(parent, from, to)` where `from` and `to` are children of
/// `parent` and something in `from` names something in `to`.
fn sibling_edges() -> BTreeSet<(String, String, String)> {
    let modules = modules();
    let reexports = root_reexports(&modules);
    let mut edges = BTreeSet::new();
    for (module, tokens) in &modules {
        for path in named_paths(module, tokens) {
            let target = resolve(&path, &modules, &reexports);
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

/// The parser sees each kind of path: `super` chains, `use` groups, inline modules, root
/// re-exports, and none in comments, strings or unit tests.
#[test]
fn paths_are_read_as_rust_resolves_them() {
    let source = r#"
        use super::super::{a, b::c};
        mod inner { use super::w; }
        use crate::{Error, gpu::kernel};
        // crate::commented
        const TEXT: &str = "crate::quoted";
        #[cfg(test)]
        mod tests { use crate::tested; }
    "#;
    let paths: Vec<String> = named_paths("x::y::z", &tokenize(source))
        .iter()
        .map(|path| path.join("::"))
        .collect();
    assert_eq!(
        paths,
        ["x::a", "x::b::c", "x::y::z::w", "Error", "gpu::kernel"]
    );
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
        ("gpu::engine", "gpu::kernel"),
        ("gpu::engine::checkpoint", "gpu::engine::submissions"),
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
