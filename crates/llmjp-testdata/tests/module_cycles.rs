//! No source file of the workspace may be part of an import cycle between files.
//!
//! Every `.rs` file under `crates/*/src/` and `xtask/src/` is read; each crate's module tree
//! is rebuilt from `lib.rs` / `main.rs` and its `mod name;` declarations (`foo.rs` +
//! `foo/bar.rs` and `foo/mod.rs` layouts, `#[cfg(..)]` ones included). Comments and string
//! literals are stripped, and test-only code (`#[cfg(test)]` / `#[cfg(doctest)]` items, such as
//! `mod tests { use super::*; .. }`) is skipped.
//!
//! An edge `a.rs -> b.rs` means `a.rs` names an item that `b.rs` defines: through a `use`
//! tree (`crate::`, `super::`, `self::`, or a name in scope such as a child module, with
//! braces, `self`, `as` and globs) or through a path in code (`crate::x::f(..)`,
//! `super::Y`, `child::g(..)`). A path is walked module by module; its final name is looked
//! up where it is defined (`fn`, `struct`, `enum`, `trait`, `type`, `const`, `static`,
//! `union`, `macro_rules!`, `mod`), following re-exports (`pub use x::Name`) to the file that
//! defines it. A `mod child;` declaration alone is not an edge, but a re-export is: a parent
//! that re-exports from a child the child takes names from is a cycle. Paths into other
//! crates are ignored. A crate root (`lib.rs`, `main.rs`) is the crate's facade, not a node:
//! it re-exports the public API and holds crate-wide items (`Result`, helpers), so every
//! child using one would close a circle through it. Every strongly connected component
//! (Tarjan) of two or more other files is a cycle.
//!
//! `KNOWN` lists cycles tolerated for now (none today); it may only shrink.
//! A failure either prints a new cycle with the edges that tie it (`a.rs -> b.rs: Name, ..`:
//! break one of them, often by moving the shared item into a file both can take it from),
//! or names a `KNOWN` entry that no longer exists: remove it from `KNOWN`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// Cycles known and not yet broken, each as its sorted workspace-relative files. Only ever
/// remove; empty since the model crate's backends got a home each (a new cycle is broken,
/// not listed).
const KNOWN: &[&[&str]] = &[];

#[test]
fn no_new_module_cycles() {
    let analysis = Analysis::new(&read_sources(&llmjp_testdata::workspace_root()));
    for file in &analysis.orphans {
        eprintln!("warning: {file} is not reached from a crate root by `mod` declarations");
    }
    let found = analysis.cycles();
    let known: BTreeSet<Vec<String>> = KNOWN
        .iter()
        .map(|cycle| sorted(cycle.iter().map(|f| f.to_string())))
        .collect();
    let mut report = String::new();
    for cycle in &found {
        let names: Vec<&str> = cycle.iter().map(|&f| analysis.files[f].as_str()).collect();
        let is_new = !known.contains(&sorted(names.iter().map(|f| f.to_string())));
        eprintln!("{} cycle: {names:?}", if is_new { "NEW" } else { "known" });
        if is_new {
            writeln!(report, "new import cycle between {names:?}:").unwrap();
            report.push_str(&analysis.describe(cycle));
        }
    }
    let found: BTreeSet<Vec<String>> = found
        .iter()
        .map(|c| sorted(c.iter().map(|&f| analysis.files[f].clone())))
        .collect();
    for cycle in known.difference(&found) {
        writeln!(
            report,
            "KNOWN cycle {cycle:?} no longer exists: remove it from KNOWN"
        )
        .unwrap();
    }
    assert!(report.is_empty(), "\n{report}");
}

/// The workspace's source files by workspace-relative path (`/`-separated).
fn read_sources(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (path, rel) = (entry.path(), format!("{rel}/{name}"));
            if path.is_dir() && name != "fixtures" {
                walk(&path, &rel, out);
            } else if name.ends_with(".rs") {
                out.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut crates: Vec<_> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    crates.sort();
    for name in crates {
        let rel = format!("crates/{}", name.to_string_lossy());
        if root.join(&rel).join("src").is_dir() {
            walk(
                &root.join(&rel).join("src"),
                &format!("{rel}/src"),
                &mut out,
            );
        }
    }
    walk(&root.join("xtask/src"), "xtask/src", &mut out);
    out
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.collect();
    items.sort();
    items
}

/// Tokens with comments, whitespace and literals removed (a literal leaves `"`).
fn lex(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let (mut toks, mut i) = (Vec::new(), 0);
    while i < c.len() {
        let ch = c[i];
        // Where a raw string (`r"`, `r#"`, `br"`, `cr#"`) would start its `#`s.
        let raw = match (ch, at(i + 1)) {
            ('r', _) => i + 1,
            ('b' | 'c', 'r') => i + 2,
            _ => 0,
        };
        let hashes = if raw > 0 {
            c[raw..].iter().take_while(|&&h| h == '#').count()
        } else {
            0
        };
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let (mut depth, mut j) = (0, i);
            while j < c.len() {
                if c[j] == '/' && at(j + 1) == '*' {
                    (depth, j) = (depth + 1, j + 2);
                } else if c[j] == '*' && at(j + 1) == '/' {
                    (depth, j) = (depth - 1, j + 2);
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i = j;
        } else if raw > 0 && at(raw + hashes) == '"' {
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i = raw + hashes + 1;
            while i < c.len() && !c[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            toks.push("\"".to_string());
        } else if ch == '"' || (matches!(ch, 'b' | 'c') && at(i + 1) == '"') {
            i += if ch == '"' { 1 } else { 2 };
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            toks.push("\"".to_string());
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            i += if ch == '\'' { 1 } else { 2 };
            if at(i) == '\\' || at(i + 1) == '\'' {
                // A character literal: `'a'`, `'\''`, `'\u{1F600}'`.
                i += if at(i) == '\\' { 2 } else { 1 };
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                toks.push("\"".to_string());
            } else {
                let start = i;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
                toks.push(format!("'{}", c[start..i].iter().collect::<String>()));
            }
        } else if ident(ch) {
            if ch == 'r' && at(i + 1) == '#' {
                i += 2; // a raw identifier
            }
            let start = i;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            toks.push(c[start..i].iter().collect());
        } else if ch == ':' && at(i + 1) == ':' {
            toks.push("::".to_string());
            i += 2;
        } else {
            toks.push(ch.to_string());
            i += 1;
        }
    }
    toks
}

fn is_ident(tok: &str) -> bool {
    tok.starts_with(|ch: char| ch.is_alphabetic() || ch == '_')
}

/// The index just past the bracket that closes the one at `open`.
fn close(t: &[String], open: usize) -> usize {
    let mut depth = 0;
    for (i, tok) in t.iter().enumerate().skip(open) {
        match tok.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return i + 1;
        }
    }
    t.len()
}

/// The index just past the item starting at `i`: its `;`, or its closing `}`.
fn skip_item(t: &[String], mut i: usize) -> usize {
    while i < t.len() {
        match t[i].as_str() {
            "(" | "[" => i = close(t, i),
            "{" => return close(t, i),
            ";" => return i + 1,
            "}" | ")" | "]" => return i,
            _ => i += 1,
        }
    }
    i
}

/// The leaves of a `use` tree starting at `*i`: (path, name it binds or `None` for a glob).
fn use_tree(
    t: &[String],
    i: &mut usize,
    mut path: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    if t.get(*i).is_some_and(|tok| tok == "::") {
        path.push("::".to_string()); // `use ::name`: another crate.
        *i += 1;
    }
    while let Some(tok) = t.get(*i) {
        *i += 1;
        match tok.as_str() {
            "{" => {
                while t.get(*i).is_some_and(|tok| tok != "}") {
                    use_tree(t, i, path.clone(), out);
                    if t.get(*i).is_some_and(|tok| tok == ",") {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            "*" => return out.push((path, None)),
            seg if is_ident(seg) => {
                if t.get(*i).is_some_and(|tok| tok == "::") {
                    path.push(seg.to_string());
                    *i += 1;
                    continue;
                }
                if seg != "self" {
                    path.push(seg.to_string());
                }
                let mut name = path.last().cloned();
                if t.get(*i).is_some_and(|tok| tok == "as") {
                    name = t.get(*i + 1).cloned();
                    *i += 2;
                }
                return out.push((path, name));
            }
            _ => return,
        }
    }
}

#[derive(Default)]
struct Module {
    file: usize,
    parent: Option<usize>,
    children: HashMap<String, usize>,
    defs: BTreeSet<String>,
    /// `use` leaves: the name bound (`None` for a glob) and the path as written.
    imports: Vec<(Option<String>, Vec<String>)>,
}

/// The `(module, name)` lookups one resolution has tried.
type Seen = HashSet<(usize, String)>;

#[derive(Clone, Copy, PartialEq)]
enum Res {
    Module(usize),
    /// An item, by the file that defines it.
    Item(usize),
}

/// The module trees of all crates, and the file-to-file edges they imply.
#[derive(Default)]
struct Analysis {
    files: Vec<String>,
    modules: Vec<Module>,
    /// Paths to resolve: the module they are written in, and the path.
    refs: Vec<(usize, Vec<String>)>,
    /// `(from, to)` file indices to the names that tie them.
    edges: BTreeMap<(usize, usize), BTreeSet<String>>,
    orphans: Vec<String>,
    /// The crate roots (`lib.rs`, `main.rs`): the crate's facade, no node of the graph.
    roots: BTreeSet<usize>,
}

impl Analysis {
    /// Files by workspace-relative path: a crate is the folder above a `src/`.
    fn new(sources: &BTreeMap<String, String>) -> Self {
        let mut this = Analysis::default();
        for path in sources.keys() {
            let Some((_, rest)) = path.split_once("/src/") else {
                continue;
            };
            if matches!(rest, "lib.rs" | "main.rs")
                || (rest.starts_with("bin/") && rest.matches('/').count() == 1)
            {
                let root = this.new_module(path, None);
                this.roots.insert(this.modules[root].file);
                this.parse(sources, path, root);
            }
        }
        this.orphans = sources
            .keys()
            .filter(|f| !this.files.contains(f))
            .cloned()
            .collect();
        for (module, path) in std::mem::take(&mut this.refs) {
            if let Some((res, name)) = this.resolve(module, &path, &mut Seen::new()) {
                let to = match res {
                    Res::Module(m) => this.modules[m].file,
                    Res::Item(file) => file,
                };
                let from = this.modules[module].file;
                let roots = &this.roots;
                if from != to && !roots.contains(&from) && !roots.contains(&to) {
                    this.edges
                        .entry((from, to))
                        .or_default()
                        .insert(name.to_string());
                }
            }
        }
        this
    }

    fn new_module(&mut self, file: &str, parent: Option<usize>) -> usize {
        let file = self
            .files
            .iter()
            .position(|f| f == file)
            .unwrap_or_else(|| {
                self.files.push(file.to_string());
                self.files.len() - 1
            });
        self.modules.push(Module {
            file,
            parent,
            ..Module::default()
        });
        self.modules.len() - 1
    }

    /// Reads the file `path` as the body of `module`, and the files it declares.
    fn parse(&mut self, sources: &BTreeMap<String, String>, path: &str, module: usize) {
        let t = lex(&sources[path]);
        let tok = |i: usize| t.get(i).map_or("", String::as_str);
        let dir = match path.rsplit_once('/') {
            Some((dir, "lib.rs" | "main.rs" | "mod.rs")) => dir.to_string(),
            _ => path.trim_end_matches(".rs").to_string(),
        };
        // Open modules: id, brace depth of their body, folder of their `mod x;` files.
        let mut stack = vec![(module, 0, dir)];
        let (mut depth, mut i) = (0, 0);
        while i < t.len() {
            let (m, body, dir) = stack.last().cloned().unwrap();
            match tok(i) {
                "#" => {
                    let open = if tok(i + 1) == "!" { i + 2 } else { i + 1 };
                    let attr = &t[open..close(&t, open)];
                    i = close(&t, open);
                    let test = attr.get(1).is_some_and(|a| a == "cfg")
                        && attr.iter().any(|a| a == "test" || a == "doctest")
                        && !attr.iter().any(|a| a == "not");
                    let mut item = i; // A test-only `mod x;` still places its file.
                    while tok(item) == "#" {
                        item = close(&t, item + 1);
                    }
                    if tok(item) == "pub" && tok(item + 1) == "(" {
                        item = close(&t, item + 1);
                    }
                    if test && !(tok(item) == "mod" && tok(item + 2) == ";") {
                        while tok(i) == "#" {
                            i = close(&t, i + 1);
                        }
                        i = skip_item(&t, i);
                    }
                }
                "pub" if tok(i + 1) == "(" => i = close(&t, i + 1), // `pub(in crate::x)` names no item.
                "use" if tok(i + 1) != "<" => {
                    let mut leaves = Vec::new();
                    i += 1;
                    while i < t.len() && tok(i) != ";" {
                        use_tree(&t, &mut i, Vec::new(), &mut leaves);
                    }
                    for (path, name) in leaves {
                        self.modules[m].imports.push((name, path.clone()));
                        self.refs.push((m, path));
                    }
                }
                "mod" if is_ident(tok(i + 1)) && matches!(tok(i + 2), ";" | "{") => {
                    let name = tok(i + 1).to_string();
                    if tok(i + 2) == ";" {
                        let flat = format!("{dir}/{name}.rs");
                        let file = if sources.contains_key(&flat) {
                            flat
                        } else {
                            format!("{dir}/{name}/mod.rs")
                        };
                        assert!(
                            sources.contains_key(&file),
                            "{path}: no file for `mod {name};`"
                        );
                        let child = self.new_module(&file, Some(m));
                        self.modules[m].children.insert(name, child);
                        self.parse(sources, &file, child);
                    } else {
                        let child = self.new_module(path, Some(m));
                        self.modules[m].children.insert(name.clone(), child);
                        depth += 1;
                        stack.push((child, depth, format!("{dir}/{name}")));
                    }
                    i += 3;
                }
                "{" | "(" | "[" => (depth, i) = (depth + 1, i + 1),
                "}" | ")" | "]" => {
                    if depth == body && stack.len() > 1 {
                        stack.pop();
                    }
                    (depth, i) = (depth - 1, i + 1);
                }
                first => {
                    if depth == body {
                        if let Some(name) = self.definition(&t, i) {
                            self.modules[m].defs.insert(name.to_string());
                        }
                    }
                    // A path in code: `crate::x::f`, `super::Y`, `child::g`, `Imported::new`.
                    let start = if first == "$" && tok(i + 1) == "crate" {
                        i + 1
                    } else {
                        i
                    };
                    let (mut path, mut j) = (vec![tok(start).to_string()], start + 1);
                    while tok(j) == "::" && is_ident(tok(j + 1)) {
                        path.push(tok(j + 1).to_string());
                        j += 2;
                    }
                    if path.len() > 1 && is_ident(&path[0]) && tok(i.wrapping_sub(1)) != "::" {
                        self.refs.push((m, path));
                        i = j;
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    /// The name an item defined at token `i` binds in its module, if it defines one.
    fn definition<'t>(&self, t: &'t [String], i: usize) -> Option<&'t str> {
        let tok = |i: usize| t.get(i).map_or("", String::as_str);
        let name = match tok(i) {
            "fn" | "struct" | "enum" | "trait" | "type" => tok(i + 1),
            "union" if matches!(tok(i + 2), "{" | "<") => tok(i + 1),
            "macro_rules" if tok(i + 1) == "!" => tok(i + 2),
            "const" | "static" if tok(i + 1) == "mut" => tok(i + 2),
            "const" | "static" if tok(i + 2) == ":" => tok(i + 1),
            _ => return None,
        };
        (is_ident(name) && name != "_").then_some(name)
    }

    fn parent(&self, m: usize) -> Option<usize> {
        self.modules[m].parent
    }

    /// Where `path`, written in module `m`, leads, and the name that led there; `None` for
    /// paths into other crates, the standard library, or names not known here.
    fn resolve<'p>(&self, m: usize, path: &'p [String], seen: &mut Seen) -> Option<(Res, &'p str)> {
        let first = path.first()?;
        let mut cur = match first.as_str() {
            "crate" => std::iter::successors(Some(m), |&m| self.parent(m)).last()?,
            "super" => self.parent(m)?,
            "self" => m,
            name => match self.lookup(m, name, seen)? {
                Res::Module(child) => child,
                item => return Some((item, name)),
            },
        };
        for seg in &path[1..] {
            let res = match seg.as_str() {
                "super" => Res::Module(self.parent(cur)?),
                "self" => Res::Module(cur),
                name => match self.lookup(cur, name, seen) {
                    Some(res) => res,
                    // Imported from another crate (`pub use safetensors::Dtype`): no edge.
                    None if self.imports(cur, name) => return None,
                    None => Res::Item(self.modules[cur].file),
                },
            };
            match res {
                Res::Module(next) => cur = next,
                item => return Some((item, seg)),
            }
        }
        Some((Res::Module(cur), path.last()?))
    }

    /// Whether module `m` has a `use` that binds `name`.
    fn imports(&self, m: usize, name: &str) -> bool {
        let imports = &self.modules[m].imports;
        imports.iter().any(|(n, _)| n.as_deref() == Some(name))
    }

    /// What `name` means inside module `m`: a child module, an item defined there, or an
    /// item or module it imports (followed to its definition).
    fn lookup(&self, m: usize, name: &str, seen: &mut Seen) -> Option<Res> {
        if !seen.insert((m, name.to_string())) {
            return None; // Already tried, or a loop of imports.
        }
        let module = &self.modules[m];
        if let Some(&child) = module.children.get(name) {
            return Some(Res::Module(child));
        }
        if module.defs.contains(name) {
            return Some(Res::Item(module.file));
        }
        let named = module
            .imports
            .iter()
            .filter(|(n, _)| n.as_deref() == Some(name));
        if let Some((res, _)) = named
            .filter_map(|(_, path)| self.resolve(m, path, seen))
            .next()
        {
            return Some(res);
        }
        let globs = module.imports.iter().filter(|(n, _)| n.is_none());
        globs
            .filter_map(|(_, path)| match self.resolve(m, path, seen)? {
                (Res::Module(g), _) if g != m => self.lookup(g, name, seen),
                _ => None,
            })
            .next()
    }

    /// The cycles: strongly connected components of two or more files, each sorted.
    fn cycles(&self) -> Vec<Vec<usize>> {
        struct Tarjan<'a> {
            next: &'a [Vec<usize>],
            count: usize,
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            stack: Vec<usize>,
            on_stack: Vec<bool>,
            out: Vec<Vec<usize>>,
        }
        impl Tarjan<'_> {
            fn visit(&mut self, v: usize) {
                let index = self.count;
                self.count += 1;
                (self.index[v], self.low[v]) = (Some(index), index);
                self.stack.push(v);
                self.on_stack[v] = true;
                for &w in &self.next[v] {
                    match self.index[w] {
                        None => {
                            self.visit(w);
                            self.low[v] = self.low[v].min(self.low[w]);
                        }
                        Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                        _ => {}
                    }
                }
                if self.low[v] == index {
                    let mut scc = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack[w] = false;
                        scc.push(w);
                        if w == v {
                            break;
                        }
                    }
                    self.out.push(scc);
                }
            }
        }
        let n = self.files.len();
        let mut next = vec![Vec::new(); n];
        for &(from, to) in self.edges.keys() {
            next[from].push(to);
        }
        let mut tarjan = Tarjan {
            next: &next,
            count: 0,
            index: vec![None; n],
            low: vec![0; n],
            stack: Vec::new(),
            on_stack: vec![false; n],
            out: Vec::new(),
        };
        for v in 0..n {
            if tarjan.index[v].is_none() {
                tarjan.visit(v);
            }
        }
        let mut cycles: Vec<Vec<usize>> =
            tarjan.out.into_iter().filter(|scc| scc.len() > 1).collect();
        for cycle in &mut cycles {
            cycle.sort_by_key(|&f| &self.files[f]);
        }
        cycles.sort_by_key(|cycle| self.files[cycle[0]].clone());
        cycles
    }

    /// The edges inside `cycle`, one `a.rs -> b.rs: Name, ..` line each.
    fn describe(&self, cycle: &[usize]) -> String {
        let mut out = String::new();
        for ((from, to), names) in &self.edges {
            if cycle.contains(from) && cycle.contains(to) {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let (a, b) = (&self.files[*from], &self.files[*to]);
                writeln!(out, "    {a} -> {b}: {}", names.join(", ")).unwrap();
            }
        }
        out
    }
}

/// The cycles of a made-up workspace, as sorted paths.
fn cycles_of(files: &[(&str, &str)]) -> Vec<Vec<String>> {
    let sources = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    let analysis = Analysis::new(&sources);
    analysis
        .cycles()
        .iter()
        .map(|c| c.iter().map(|&f| analysis.files[f].clone()).collect())
        .collect()
}

#[test]
fn resolver_finds_cycles_and_ignores_tests_and_comments() {
    let pair = |a: &str, b: &str| vec![vec![format!("a/src/{a}"), format!("a/src/{b}")]];
    let lib = ("a/src/lib.rs", "mod x;\nmod y;\npub struct Root;\n");
    // `use super::..` both ways, through a brace tree with a rename.
    let x = (
        "a/src/x.rs",
        "use super::{y::{self as why, Y}};\npub struct X;\n",
    );
    let y = (
        "a/src/y.rs",
        "use super::x::X;\npub fn f() {}\npub struct Y;\n",
    );
    assert_eq!(cycles_of(&[lib, x, y]), pair("x.rs", "y.rs"));
    // Paths in code, not in `use` lines.
    let x = ("a/src/x.rs", "pub fn g() -> u8 { crate::y::f() }\n");
    let y = (
        "a/src/y.rs",
        "pub fn f() -> u8 { let _ = super::x::g; 1 }\n",
    );
    assert_eq!(cycles_of(&[lib, x, y]), pair("x.rs", "y.rs"));
    // A re-export: p.rs takes `X` from its child, which takes `P` from p.rs.
    let lib = ("a/src/lib.rs", "mod p;\n");
    let p = ("a/src/p.rs", "mod x;\npub use x::X;\npub struct P;\n");
    let x = ("a/src/p/x.rs", "use super::P;\npub struct X(P);\n");
    assert_eq!(cycles_of(&[lib, p, x]), pair("p.rs", "p/x.rs"));
    // Without the re-export, `mod x;` alone ties nothing.
    let p = ("a/src/p.rs", "mod x;\npub struct P;\n");
    assert_eq!(cycles_of(&[lib, p, x]), Vec::<Vec<String>>::new());
    // A name re-exported by the root leads to the file defining it (y/z.rs), and the crate
    // root is no node; `foo/mod.rs` and `foo.rs` + `foo/bar.rs` layouts.
    let lib = (
        "a/src/lib.rs",
        "mod x;\nmod y;\npub use y::*;\npub struct R(x::X);\n",
    );
    let x = ("a/src/x/mod.rs", "mod deep;\npub use deep::X;\n");
    let deep = ("a/src/x/deep.rs", "pub struct X(crate::Y, crate::R);\n");
    let y = ("a/src/y.rs", "mod z;\npub use z::Y;\n");
    let z = ("a/src/y/z.rs", "pub struct Y(Box<crate::x::X>);\n");
    assert_eq!(
        cycles_of(&[lib, x, deep, y, z]),
        pair("x/deep.rs", "y/z.rs")
    );
    // Test modules, comments and strings tie nothing.
    let lib = ("a/src/lib.rs", "mod x;\nmod y;\npub struct Root;\n");
    let x = ("a/src/x.rs", "use super::y::Y;\npub struct X;\n");
    let y = (
        "a/src/y.rs",
        "/// Unlike [`crate::x::X`]\npub struct Y; // super::x::X\n/* crate::x::X */\n\
         fn s() -> &'static str { \"crate::x::X\" }\nconst C: char = '\\'';\n\
         #[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::x::X;\n    fn t() { crate::x::X; }\n}\n",
    );
    assert_eq!(cycles_of(&[lib, x, y]), Vec::<Vec<String>>::new());
}
