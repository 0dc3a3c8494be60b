// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate's modules stand in layers: no module imports a module that imports it back,
//! directly or around a longer loop; no module reaches up to the crate root (`lib.rs`, which
//! declares and re-exports them all); and only the `fuzzing` harness's own modules name
//! `fuzzing`.
//!
//! The graph is read from `src/**/*.rs` (the binary's `main.rs` aside): every path a module
//! names — `crate::a::…` in a `use` or in code, the groups of `use crate::{a, b::C}`,
//! `super::…`, `self::…`, and a child module by its name — is resolved to the file module it
//! points into. Comments and literals are skipped; what a module's inline `mod tests` names
//! counts as the module's own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path in the crate (`[]` is the crate root, `["http", "allow"]` is
/// `src/http/allow.rs`).
type ModulePath = Vec<String>;

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_sources(&src, &src, &mut files);
    assert!(files.len() > 10, "the sources were not found in {src:?}");
    let graph = Graph::of(&files);
    println!("{}", graph.describe());
    let problems = graph.problems();
    assert!(
        problems.is_empty(),
        "the backend's modules must stand in layers:\n{}",
        problems.join("\n")
    );
}

/// Every `.rs` file under `dir`, as (path relative to `root`, text).
fn read_sources(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_sources(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The module of a file: `lib.rs` is the root, `a/mod.rs` and `a.rs` are `a`. `None` for a
/// crate root of its own (the binary's `main.rs`).
fn module_of(file: &str) -> Option<ModulePath> {
    let stem = file.strip_suffix(".rs")?;
    if stem == "main" || stem.starts_with("bin/") {
        return None;
    }
    if stem == "lib" {
        return Some(Vec::new());
    }
    let mut path: ModulePath = stem.split('/').map(str::to_owned).collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    Some(path)
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// Where a module names another, for the messages.
#[derive(Clone, Debug)]
struct Reference {
    file: String,
    line: usize,
    path: String,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` (src/{}:{})", self.path, self.file, self.line)
    }
}

/// Who imports whom, with the first reference of each edge.
struct Graph {
    edges: BTreeMap<ModulePath, BTreeMap<ModulePath, Reference>>,
}

impl Graph {
    fn of(files: &[(String, String)]) -> Self {
        let modules: BTreeSet<ModulePath> = files
            .iter()
            .filter_map(|(file, _)| module_of(file))
            .collect();
        let mut edges: BTreeMap<ModulePath, BTreeMap<ModulePath, Reference>> = BTreeMap::new();
        for (file, text) in files {
            let Some(module) = module_of(file) else {
                continue;
            };
            let from = edges.entry(module.clone()).or_default();
            for (line, path) in references(&module, text) {
                if let Some(to) = resolve(&module, &path, &modules) {
                    from.entry(to).or_insert_with(|| Reference {
                        file: file.clone(),
                        line,
                        path: path.display.clone(),
                    });
                }
            }
        }
        Self { edges }
    }

    /// Everything that breaks the layers, one line each.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (from, targets) in &self.edges {
            for (to, reference) in targets {
                if to.is_empty() && !from.is_empty() {
                    problems.push(format!(
                        "module `{}` reaches up to the crate root with {reference}: name the item \
                         through the module that defines it",
                        name(from)
                    ));
                }
                let in_harness = |m: &ModulePath| m.first().is_some_and(|f| f == "fuzzing");
                if in_harness(to) && !in_harness(from) && !from.is_empty() {
                    problems.push(format!(
                        "module `{}` imports the fuzzing harness with {reference}",
                        name(from)
                    ));
                }
                // Each pair once.
                if from < to {
                    if let Some(back) = self.edges.get(to).and_then(|t| t.get(from)) {
                        problems.push(format!(
                            "modules `{}` and `{}` import each other: {reference} and {back}",
                            name(from),
                            name(to)
                        ));
                    }
                }
            }
        }
        for cycle in self.longer_cycles() {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|pair| {
                    format!(
                        "{} names {}",
                        name(&pair[0]),
                        self.edges[&pair[0]][&pair[1]]
                    )
                })
                .collect();
            let names: Vec<String> = cycle.iter().map(|m| name(m)).collect();
            problems.push(format!(
                "modules import each other around a loop: {} ({})",
                names.join(" → "),
                steps.join("; ")
            ));
        }
        problems
    }

    /// One loop of three or more modules through each group of modules that reach each other
    /// (two that import each other are reported as a pair), as its modules with the first
    /// repeated at the end.
    fn longer_cycles(&self) -> Vec<Vec<ModulePath>> {
        let mut cycles = Vec::new();
        let mut seen: BTreeSet<ModulePath> = BTreeSet::new();
        for start in self.edges.keys() {
            if seen.contains(start) {
                continue;
            }
            let group: BTreeSet<ModulePath> = self
                .reachable(start)
                .into_iter()
                .filter(|m| self.reachable(m).contains(start))
                .collect();
            seen.extend(group.iter().cloned());
            if group.len() < 3 {
                continue;
            }
            if let Some(cycle) = self.cycle_through(start, &group) {
                if cycle.len() > 3 {
                    cycles.push(cycle);
                }
            }
        }
        cycles
    }

    fn reachable(&self, from: &ModulePath) -> BTreeSet<ModulePath> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(module) = stack.pop() {
            for next in self.edges.get(&module).into_iter().flat_map(BTreeMap::keys) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    }

    /// The longest simple loop from `start` back to it inside `group` that a depth-first
    /// walk finds first.
    fn cycle_through(
        &self,
        start: &ModulePath,
        group: &BTreeSet<ModulePath>,
    ) -> Option<Vec<ModulePath>> {
        fn walk(
            graph: &Graph,
            path: &mut Vec<ModulePath>,
            group: &BTreeSet<ModulePath>,
        ) -> Option<Vec<ModulePath>> {
            let last = path.last()?.clone();
            let next: Vec<&ModulePath> = graph.edges.get(&last)?.keys().collect();
            for to in next {
                if *to == path[0] && path.len() > 2 {
                    let mut cycle = path.clone();
                    cycle.push(to.clone());
                    return Some(cycle);
                }
                if group.contains(to) && !path.contains(to) {
                    path.push(to.clone());
                    if let Some(cycle) = walk(graph, path, group) {
                        return Some(cycle);
                    }
                    path.pop();
                }
            }
            None
        }
        walk(self, &mut vec![start.clone()], group)
    }

    /// Who imports whom, one module a line.
    fn describe(&self) -> String {
        let mut text = String::from("module graph (who imports whom):\n");
        for (from, targets) in &self.edges {
            let to: Vec<String> = targets.keys().map(|m| name(m)).collect();
            text.push_str(&format!("  {} → {}\n", name(from), to.join(", ")));
        }
        text
    }
}

/// A path a module names: where it starts (`crate`, `super`, `self`, or a child's name),
/// its segments, and how it read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NamedPath {
    segments: Vec<String>,
    /// The module (file module and inline modules) the path is named from.
    scope: ModulePath,
    display: String,
}

/// Resolves `path`, named in `module`, to the file module it points into; `None` for a path
/// inside `module` itself (or outside the crate).
fn resolve(
    module: &ModulePath,
    path: &NamedPath,
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    let segments = &path.segments;
    let (mut base, rest): (ModulePath, &[String]) = match segments.first()?.as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (path.scope.clone(), &segments[1..]),
        "super" => {
            let ups = segments.iter().take_while(|s| *s == "super").count();
            let keep = path.scope.len().checked_sub(ups)?;
            (path.scope[..keep].to_vec(), &segments[ups..])
        }
        // A child module of the file, by its name.
        _ => (module.clone(), &segments[..]),
    };
    // A path into the module's own inline modules (its tests) stays inside it.
    if base.len() > module.len() && base.starts_with(module) {
        return None;
    }
    for segment in rest {
        let mut deeper = base.clone();
        deeper.push(segment.clone());
        if !modules.contains(&deeper) {
            break;
        }
        base = deeper;
    }
    (base != *module && (base.is_empty() || modules.contains(&base))).then_some(base)
}

/// A token of Rust source: what the import scan needs, everything else as `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `::`
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

/// The tokens of `text` with their lines, without comments and literals.
fn tokens(text: &str) -> Vec<(usize, Token)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' || ((c == 'b' || c == 'c') && at(i + 1) == '"') {
            i += if c == '"' { 1 } else { 2 };
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
            out.push((start_line, Token::Other));
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br"…": to the quote followed by as many `#`.
            i = hashes.1;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (1..=hashes.0).all(|k| at(i + k) == '#') {
                    i += 1 + hashes.0;
                    break;
                }
                line += usize::from(chars[i] == '\n');
                i += 1;
            }
            out.push((start_line, Token::Other));
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while is_ident_char(at(i)) {
                    i += 1;
                }
            }
            out.push((start_line, Token::Other));
        } else if c == 'r' && at(i + 1) == '#' && is_ident_start(at(i + 2)) {
            // A raw identifier.
            let start = i + 2;
            i = start;
            while is_ident_char(at(i)) {
                i += 1;
            }
            out.push((start_line, Token::Ident(chars[start..i].iter().collect())));
        } else if is_ident_start(c) {
            let start = i;
            while is_ident_char(at(i)) {
                i += 1;
            }
            out.push((start_line, Token::Ident(chars[start..i].iter().collect())));
        } else if c.is_ascii_digit() {
            while is_ident_char(at(i)) {
                i += 1;
            }
            out.push((start_line, Token::Other));
        } else {
            let token = match c {
                ':' if at(i + 1) == ':' => {
                    i += 1;
                    Token::PathSep
                }
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                ';' => Token::Semi,
                '*' => Token::Star,
                _ => Token::Other,
            };
            i += 1;
            out.push((start_line, token));
        }
    }
    out
}

/// At a raw string (`r"`, `r#"`, `br##"`…): its `#` count and where its text starts.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') || chars.get(j) == Some(&'c') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some((hashes, j + hashes + 1))
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Every path `module`'s `text` names that may lead to another module of the crate, with its
/// line.
fn references(module: &ModulePath, text: &str) -> Vec<(usize, NamedPath)> {
    let tokens = tokens(text);
    let ident = |i: usize| match tokens.get(i) {
        Some((_, Token::Ident(name))) => Some(name.as_str()),
        _ => None,
    };
    let token = |i: usize| tokens.get(i).map(|(_, t)| t);
    // The child modules the file declares (`mod a;`).
    let children: BTreeSet<&str> = (0..tokens.len())
        .filter(|&i| ident(i) == Some("mod") && token(i + 2) == Some(&Token::Semi))
        .filter_map(|i| ident(i + 1))
        .collect();
    let mut found = Vec::new();
    // Inline modules open around the current token: their names and brace depths.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].1 {
            Token::Open => {
                depth += 1;
                if i >= 2 && ident(i - 2) == Some("mod") {
                    if let Some(name) = ident(i - 1) {
                        inline.push((name.to_owned(), depth));
                    }
                }
            }
            Token::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(first) => {
                let starts_path = token(i + 1) == Some(&Token::PathSep)
                    && (i == 0 || token(i - 1) != Some(&Token::PathSep))
                    && (matches!(first.as_str(), "crate" | "self" | "super")
                        || children.contains(first.as_str()));
                if starts_path {
                    let mut scope = module.clone();
                    scope.extend(inline.iter().map(|(name, _)| name.clone()));
                    let (paths, end) = parse_path(&tokens, i);
                    for segments in paths {
                        let display = segments.join("::");
                        found.push((
                            tokens[i].0,
                            NamedPath {
                                segments,
                                scope: scope.clone(),
                                display,
                            },
                        ));
                    }
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The paths named from token `start` on (one, or several for a `{…}` group), and the index
/// of the first token after them.
fn parse_path(tokens: &[(usize, Token)], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = start;
    loop {
        match tokens.get(i).map(|(_, t)| t) {
            Some(Token::Ident(segment)) => {
                prefix.push(segment.clone());
                i += 1;
            }
            _ => return (vec![prefix], i),
        }
        if tokens.get(i).map(|(_, t)| t) != Some(&Token::PathSep) {
            return (vec![prefix], i);
        }
        i += 1;
        match tokens.get(i).map(|(_, t)| t) {
            Some(Token::Open) => {
                let (items, end) = parse_group(tokens, i + 1);
                let paths = items
                    .into_iter()
                    .map(|item| {
                        let mut path = prefix.clone();
                        // `a::{self, B}` names `a`.
                        path.extend(item.into_iter().filter(|s| s != "self"));
                        path
                    })
                    .collect();
                return (paths, end);
            }
            Some(Token::Ident(_)) => {}
            // `a::*`, or something that is not a path after all.
            _ => return (vec![prefix], i),
        }
    }
}

/// The items of a `{…}` group whose first token is at `start`, each a path relative to the
/// group's prefix, and the index after its closing brace.
fn parse_group(tokens: &[(usize, Token)], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut items = Vec::new();
    let mut i = start;
    loop {
        match tokens.get(i).map(|(_, t)| t) {
            None => return (items, i),
            Some(Token::Close) => return (items, i + 1),
            Some(Token::Ident(_)) => {
                let (paths, end) = parse_path(tokens, i);
                items.extend(paths);
                i = end;
                // Past `as NAME` and anything else up to the item's end.
                let mut nested = 0usize;
                while let Some((_, t)) = tokens.get(i) {
                    match t {
                        Token::Open => nested += 1,
                        Token::Close if nested == 0 => break,
                        Token::Close => nested -= 1,
                        Token::Comma if nested == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            Some(_) => i += 1,
        }
    }
}

#[cfg(test)]
mod checker {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> Graph {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        Graph::of(&files)
    }

    fn edges(graph: &Graph, from: &str) -> Vec<String> {
        let from: ModulePath = from.split("::").map(str::to_owned).collect();
        graph.edges[&from].keys().map(|m| name(m)).collect()
    }

    #[test]
    fn two_modules_that_import_each_other_are_named() {
        let g = graph(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use std::io;\n\nuse crate::b::Thing;\n"),
            ("b.rs", "fn f() { crate::a::helper(); }\n"),
            ("c.rs", "use crate::a::X;\n"),
        ]);
        let problems = g.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("`a` and `b` import each other")
                && problems[0].contains("src/a.rs:3")
                && problems[0].contains("src/b.rs:1"),
            "{problems:?}"
        );
    }

    #[test]
    fn groups_super_self_and_children_are_followed() {
        let g = graph(&[
            ("lib.rs", "mod a;\nmod h;\n"),
            (
                "a.rs",
                "use crate::{h::{self, inner::Deep}, Root as R};\nuse crate::b::{c, d::E};\n",
            ),
            (
                "h.rs",
                "mod inner;\nuse self::inner::X;\nfn f() { inner::g(); }\n",
            ),
            ("h/inner.rs", "use super::super::a::Y;\n"),
        ]);
        assert_eq!(edges(&g, "a"), ["crate", "h", "h::inner"]);
        assert_eq!(edges(&g, "h"), ["h::inner"]);
        assert_eq!(edges(&g, "h::inner"), ["a"]);
        let problems = g.problems().join("\n");
        assert!(
            problems.contains("`a` reaches up to the crate root"),
            "{problems}"
        );
        assert!(
            problems.contains("`a` and `h::inner` import each other"),
            "{problems}"
        );
    }

    #[test]
    fn a_longer_loop_is_found() {
        let g = graph(&[
            ("lib.rs", ""),
            ("a.rs", "use crate::b::X;\n"),
            ("b.rs", "use crate::c::X;\n"),
            ("c.rs", "use crate::a::X;\n"),
            ("d.rs", "use crate::a::X;\n"),
        ]);
        let problems = g.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("a → b → c → a"), "{problems:?}");
    }

    #[test]
    fn comments_literals_and_own_tests_do_not_count() {
        let g = graph(&[
            ("lib.rs", ""),
            (
                "a.rs",
                "//! See [`crate::b::X`].\n/* crate::b::Y */\nfn f<'a>(x: &'a str) -> char {\n    \
                 let _ = \"crate::b::Z\";\n    let _ = r#\"crate::b::W\"#;\n    '\"'\n}\n\
                 #[cfg(test)]\nmod tests {\n    use super::*;\n    use self::more::M;\n    \
                 mod more {}\n}\n",
            ),
            ("b.rs", "use crate::a::f;\n"),
        ]);
        assert!(edges(&g, "a").is_empty(), "{:?}", edges(&g, "a"));
        assert!(g.problems().is_empty(), "{:?}", g.problems());
    }

    #[test]
    fn only_the_harness_names_the_harness() {
        let g = graph(&[
            ("lib.rs", "pub mod fuzzing;\n"),
            (
                "fuzzing.rs",
                "mod model;\nuse crate::a::A;\nuse model::M;\n",
            ),
            ("fuzzing/model.rs", "use std::fmt;\n"),
            (
                "a.rs",
                "#[cfg(feature = \"fuzzing\")]\nuse crate::fuzzing::Hook;\n",
            ),
        ]);
        let problems = g.problems().join("\n");
        assert!(
            problems.contains("`a` imports the fuzzing harness"),
            "{problems}"
        );
        assert!(
            problems.contains("`a` and `fuzzing` import each other"),
            "{problems}"
        );
        assert!(!problems.contains("model"), "{problems}");
    }
}
