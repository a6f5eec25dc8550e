//! The documentation held to the code, so that neither can change without the other: every
//! `--flag` the docs name exists on the command they name it for (with the values they give),
//! README's flag list is `push --help`'s, every environment variable the docs name is read by
//! the code and every one the code reads is in README's table, the JSON events in docs/API.md
//! are the ones nixfly emits, the mkFlyDeploy and mkLayerPlan arguments in docs/API.md are the
//! Nix code's (with its defaults), the settings fields agree across docs/API.md, the schema and
//! `src/settings.rs` (defaults included), and the fly.toml sections README says are deployed are
//! read by the parser. Text only: no registry, no network, no Nix.

use clap::CommandFactory;
use nixfly::cli::Cli;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The documents a user reads.
const DOCS: &[&str] = &[
    "README.md",
    "docs/API.md",
    "docs/layer-plan.md",
    "templates/default/README.md",
];

/// Flags the docs name that belong to other tools, and the tool.
const FOREIGN_FLAGS: &[(&str, &str)] = &[
    ("--builders", "nix"),
    ("--no-build", "nix flake check"),
    ("--raw", "nix eval"),
    ("--dest-creds", "skopeo copy"),
    ("--example", "cargo run"),
    ("--test", "cargo test"),
    ("--runs", "bench/*.py"),
    ("--delay-ms", "bench/*.py"),
    ("--a", "bench/ab.py"),
    ("--b", "bench/ab.py"),
    ("--scenario", "bench/ab.py"),
    ("--floor", "examples/measure_levels.rs"),
    ("--region", "fly volume create"),
    ("--count", "fly volume create"),
    ("--stage", "fly secrets set"),
];

/// Flags of the Fly API double's example binary, checked against its source.
const EXAMPLE: &str = "examples/fly_api_double.rs";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The code of a Markdown text: each line of a fenced or indented block, and each inline span
/// (which may wrap lines; spans are joined with single spaces).
fn code_snippets(text: &str) -> Vec<String> {
    let mut snippets = Vec::new();
    let mut paragraph = String::new();
    let mut fenced = false;
    let mut previous_blank = true;
    let mut in_indented = false;
    let flush = |paragraph: &mut String, snippets: &mut Vec<String>| {
        for (i, part) in paragraph.split('`').enumerate() {
            if i % 2 == 1 {
                snippets.push(part.to_string());
            }
        }
        paragraph.clear();
    };
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            flush(&mut paragraph, &mut snippets);
            fenced = !fenced;
            continue;
        }
        let indented = line.starts_with("    ") && (previous_blank || in_indented) && paragraph.is_empty();
        if fenced || indented {
            snippets.push(line.trim().to_string());
            in_indented = indented;
        } else if line.trim().is_empty() {
            flush(&mut paragraph, &mut snippets);
            in_indented = false;
        } else {
            in_indented = false;
            // A table row is its own paragraph: its cells never share a span.
            if line.starts_with('|') {
                flush(&mut paragraph, &mut snippets);
                paragraph.push_str(line);
                flush(&mut paragraph, &mut snippets);
                previous_blank = false;
                continue;
            }
            paragraph.push(' ');
            paragraph.push_str(line.trim());
        }
        previous_blank = line.trim().is_empty();
    }
    flush(&mut paragraph, &mut snippets);
    snippets
}

/// Every `--long-flag` in `text` (a leading `-` or letter before it disqualifies it).
fn long_flags(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut flags = Vec::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'-');
        let mut end = start + 2;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'-')
        {
            end += 1;
        }
        if before_ok && end > start + 2 && bytes[start + 2].is_ascii_lowercase() {
            flags.push(text[start..end].trim_end_matches('-').to_string());
        }
        i = end.max(start + 2);
    }
    flags
}

/// nixfly's command tree, built (so that `--help` and `--version` are in it).
fn cli() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// Each command of the tree by its path (`nixfly`, `nixfly push`, `nixfly layer build`).
fn commands() -> BTreeMap<String, clap::Command> {
    fn walk(cmd: &clap::Command, path: String, out: &mut BTreeMap<String, clap::Command>) {
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{path} {}", sub.get_name()), out);
        }
        out.insert(path, cmd.clone());
    }
    let mut out = BTreeMap::new();
    walk(&cli(), "nixfly".into(), &mut out);
    out
}

/// The argument `--long` (or an alias of it) or `-s` of `cmd`.
fn find_arg<'c>(cmd: &'c clap::Command, flag: &str) -> Option<&'c clap::Arg> {
    cmd.get_arguments().find(|arg| {
        if let Some(long) = flag.strip_prefix("--") {
            arg.get_long() == Some(long) || arg.get_all_aliases().is_some_and(|a| a.contains(&long))
        } else {
            let short = flag.trim_start_matches('-').chars().next();
            short.is_some() && arg.get_short() == short
        }
    })
}

fn is_placeholder(value: &str) -> bool {
    value.is_empty()
        || value.contains(['<', '>', '$', '…', '{', '['])
        || value.contains("...")
        || value.chars().any(|c| c.is_ascii_uppercase())
}

/// Where a snippet runs nixfly: the command path and the words after it.
fn command_line(snippet: &str, tree: &BTreeMap<String, clap::Command>) -> Option<(String, Vec<String>)> {
    // Cut a shell comment (but not `.#deploy`) and what `$(...)` runs.
    let mut snippet = snippet.split(" # ").next().unwrap_or(snippet).to_string();
    while let Some(start) = snippet.find("$(") {
        let end = snippet[start..]
            .find(')')
            .map_or(snippet.len(), |e| start + e + 1);
        snippet.replace_range(start..end, "SUBSTITUTED");
    }
    let snippet = snippet.as_str();
    // mkFlyDeploy's `extraFlags = [ "--output=plain" ]`: deploy flags.
    if snippet.starts_with("[ \"-") {
        let words = snippet.split('"').skip(1).step_by(2).map(String::from);
        return Some(("nixfly deploy".into(), words.collect()));
    }
    if let Some(at) = snippet.find("#deploy -- ") {
        let words = snippet[at + "#deploy -- ".len()..]
            .split_whitespace()
            .map(String::from);
        return Some(("nixfly deploy".into(), words.collect()));
    }
    let bytes = snippet.as_bytes();
    let at = snippet.match_indices("nixfly ").map(|(at, _)| at).find(|&at| {
        at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || b"/.-_".contains(&bytes[at - 1]))
    })?;
    let mut words = snippet[at + "nixfly ".len()..].split_whitespace().peekable();
    let mut path = "nixfly".to_string();
    while let Some(word) = words.peek() {
        let candidate = format!("{path} {word}");
        if tree.contains_key(&candidate) {
            path = candidate;
            words.next();
        } else {
            break;
        }
    }
    Some((path, words.map(String::from).collect()))
}

#[test]
fn docs_flags_exist_on_the_commands_they_are_given_to() {
    let tree = commands();
    let example = read(EXAMPLE);
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        let text = read(doc);
        // 1. A command line in the docs: each flag on it is that command's, with a value it takes.
        for snippet in code_snippets(&text) {
            if let Some(at) = snippet.find("--example fly_api_double -- ") {
                for flag in long_flags(&snippet[at + 28..]) {
                    let field = format!("{}:", flag.trim_start_matches('-').replace('-', "_"));
                    if !example.contains(&field) {
                        problems.push(format!("{doc}: `{snippet}`: {EXAMPLE} has no {flag}"));
                    }
                }
                continue;
            }
            let Some((path, words)) = command_line(&snippet, &tree) else {
                continue;
            };
            let cmd = &tree[&path];
            let mut words = words.iter().peekable();
            while let Some(word) = words.next() {
                let is_flag = word
                    .strip_prefix("--")
                    .or(word.strip_prefix('-'))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphabetic()));
                if !is_flag {
                    continue;
                }
                let (flag, inline_value) = match word.split_once('=') {
                    Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                    None => (word.clone(), None),
                };
                // `-vv` is `-v` twice.
                let flag = if !flag.starts_with("--") {
                    flag[..2].to_string()
                } else {
                    flag
                };
                checked += 1;
                let Some(arg) = find_arg(cmd, &flag) else {
                    problems.push(format!("{doc}: `{snippet}`: `{path}` has no {flag}"));
                    continue;
                };
                if !arg.get_action().takes_values() {
                    continue;
                }
                let value = inline_value.or_else(|| words.next().cloned()).unwrap_or_default();
                let possible: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_string())
                    .collect();
                if possible.is_empty() || is_placeholder(&value) {
                    continue;
                }
                for value in value.split('|') {
                    if !possible.iter().any(|p| p == value) {
                        problems.push(format!(
                            "{doc}: `{snippet}`: {flag} takes {possible:?}, not {value:?}"
                        ));
                    }
                }
            }
        }
        // 2. Every flag anywhere: nixfly's (any command, hidden ones included) or another tool's.
        for flag in long_flags(&text) {
            checked += 1;
            let nixfly = tree.values().any(|cmd| find_arg(cmd, &flag).is_some());
            let foreign = FOREIGN_FLAGS.iter().any(|(f, _)| *f == flag);
            let example_flag =
                example.contains(&format!("{}:", flag.trim_start_matches('-').replace('-', "_")));
            if !(nixfly || foreign || example_flag) {
                problems.push(format!(
                    "{doc}: {flag} is not a flag of any nixfly command (nor of {:?})",
                    FOREIGN_FLAGS
                        .iter()
                        .map(|(_, tool)| *tool)
                        .collect::<BTreeSet<_>>()
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} flags found: is the extraction broken?"
    );
    assert!(
        problems.is_empty(),
        "the docs name flags the code does not have:\n{}",
        problems.join("\n")
    );
}

/// The push flags README lists `under the same headings as in --help` are push's, all of them,
/// each under its heading; and `deploy adds the Rollout flags below and --settings`.
#[test]
fn docs_readme_lists_push_flags_under_their_help_headings() {
    let readme = read("README.md");
    let start = readme
        .find("Flags (all in `nixfly push --help`")
        .expect("README's push flag list");
    let end = start
        + readme[start..]
            .find("`deploy` adds")
            .expect("end of the push flag list");
    let paragraph = readme[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let tree = commands();
    let push = &tree["nixfly push"];
    let visible: Vec<&clap::Arg> = push
        .get_arguments()
        .filter(|a| {
            !a.is_hide_set() && !a.is_positional() && !["help", "version"].contains(&a.get_id().as_str())
        })
        .collect();
    let headings: BTreeSet<&str> = visible.iter().filter_map(|a| a.get_help_heading()).collect();
    // Where each heading starts in the paragraph, then which heading each listed flag is under.
    let mut starts: Vec<(usize, &str)> = headings
        .iter()
        .map(|h| {
            let at = paragraph
                .find(&format!("{h} `-"))
                .unwrap_or_else(|| panic!("README's push flag list has no `{h}` heading: {paragraph}"));
            (at, *h)
        })
        .collect();
    starts.sort();
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    let mut offset = 0;
    for (i, snippet) in paragraph.split('`').enumerate() {
        let at = offset;
        offset += snippet.len() + 1;
        if i % 2 == 0 || !snippet.starts_with('-') || snippet.starts_with("--help") {
            continue;
        }
        let flag = snippet.split_whitespace().next().unwrap();
        let heading = starts
            .iter()
            .rev()
            .find(|(start, _)| *start <= at)
            .map(|(_, h)| *h);
        match find_arg(push, flag) {
            None => problems.push(format!("{flag} is not a push flag")),
            Some(arg) => {
                if !listed.insert(arg.get_id().to_string()) {
                    problems.push(format!("{flag} is listed twice"));
                }
                if arg.get_help_heading() != heading {
                    problems.push(format!(
                        "{flag} is listed under {heading:?}, but push --help shows it under {:?}",
                        arg.get_help_heading()
                    ));
                }
            }
        }
    }
    for arg in &visible {
        if !listed.contains(arg.get_id().as_str()) {
            problems.push(format!(
                "push --help has --{} (under {:?}), README's list does not",
                arg.get_id(),
                arg.get_help_heading()
            ));
        }
    }
    // deploy = push + rollout's Rollout flags + --settings.
    let ids = |cmd: &clap::Command, heading: Option<&str>| -> BTreeSet<String> {
        cmd.get_arguments()
            .filter(|a| heading.is_none() || a.get_help_heading() == heading)
            .map(|a| a.get_id().to_string())
            .collect()
    };
    let mut expected = ids(push, None);
    expected.extend(ids(&tree["nixfly rollout"], Some("Rollout")));
    expected.insert("settings".into());
    let deploy = ids(&tree["nixfly deploy"], None);
    if deploy != expected {
        problems.push(format!(
            "README says deploy adds the Rollout flags and --settings to push's; deploy has {:?} more and lacks {:?}",
            deploy.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&deploy).collect::<Vec<_>>()
        ));
    }
    assert!(
        problems.is_empty(),
        "README's push flag list and --help differ:\n{}",
        problems.join("\n")
    );
}

/// Every visible flag of the commands a user runs is somewhere in README, and its help says
/// what it does.
#[test]
fn docs_every_visible_flag_is_in_readme_and_explained_in_help() {
    let readme = read("README.md");
    let mut problems = Vec::new();
    for (path, cmd) in commands() {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if ["help", "version"].contains(&id) || arg.is_hide_set() {
                continue;
            }
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if help.trim().is_empty() && arg.get_possible_values().is_empty() {
                problems.push(format!("`{path}`: {id} has no help text"));
            }
            // An optional value without a default clap shows must say its default itself.
            let optional_value = arg.get_action().takes_values()
                && !arg.is_required_set()
                && !arg.is_positional()
                && arg.get_default_values().is_empty()
                && !matches!(arg.get_action(), clap::ArgAction::Append);
            // Commands under hidden ones (`layer`, run by mkLayerPlan; `registry`, a debugging
            // aid for the tests, not documented on purpose) only need help texts.
            let user_facing = !path.starts_with("nixfly layer") && !path.starts_with("nixfly registry");
            if optional_value && !help.contains("Default") && user_facing {
                problems.push(format!(
                    "`{path}`: --{} has no default shown and its help does not say it",
                    arg.get_long().unwrap_or(id)
                ));
            }
            if arg.is_positional() || !user_facing {
                continue;
            }
            let long = arg.get_long().map(|l| format!("`--{l}"));
            let short = arg.get_short().map(|s| format!("`-{s}"));
            if !long.iter().chain(&short).any(|f| readme.contains(f.as_str())) {
                problems.push(format!(
                    "`{path}`: --{} is not in README",
                    arg.get_long().unwrap_or(id)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `NAME` (at least one `_`, upper case) tokens of a text.
fn env_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.contains('_')
                && w.starts_with(|c: char| c.is_ascii_uppercase())
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && !w.ends_with('_')
        })
        .map(String::from)
        .collect()
}

fn rust_sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
}

/// The environment variables nixfly reads: clap's `env`, `env::var("X")`/`var_os("X")` in src/,
/// and the token variables (read through a list).
fn env_vars_read() -> BTreeSet<String> {
    let mut vars: BTreeSet<String> = commands()
        .values()
        .flat_map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut sources = Vec::new();
    rust_sources(&root().join("src"), &mut sources);
    for (_, text) in &sources {
        for call in ["var(\"", "var_os(\""] {
            for (at, _) in text.match_indices(call) {
                let rest = &text[at + call.len()..];
                vars.insert(rest[..rest.find('"').unwrap()].to_string());
            }
        }
    }
    let token = read("src/fly/token.rs");
    let list = token
        .lines()
        .find(|l| l.starts_with("const TOKEN_ENV_VARS"))
        .expect("TOKEN_ENV_VARS in src/fly/token.rs");
    vars.extend(env_names(list.split_once('=').unwrap().1));
    vars
}

#[test]
fn docs_env_vars_are_the_ones_the_code_reads() {
    let mut sources = Vec::new();
    rust_sources(&root().join("src"), &mut sources);
    let code: String = sources
        .iter()
        .flat_map(|(_, text)| text.lines().filter(|l| !l.trim_start().starts_with("//")))
        .collect::<Vec<_>>()
        .join("\n");
    let mut problems = Vec::new();
    // Named in a doc: the code has it (reads it, or sets it on machines: FLY_TEST_MACHINE_IP).
    for doc in DOCS {
        for name in env_names(&read(doc)) {
            if !code.contains(&name) {
                problems.push(format!("{doc} names {name}, which src/ never mentions"));
            }
        }
    }
    // Read by the code: README's table of environment variables has it, with its flag.
    let readme = read("README.md");
    let table = section(&readme, "## Environment variables");
    let rows = table_rows(table);
    let documented: BTreeMap<String, Vec<String>> = rows
        .iter()
        .filter_map(|row| {
            Some((
                first_code(&row[0])?,
                row.get(1).map(|c| spans(c)).unwrap_or_default(),
            ))
        })
        .collect();
    let read_vars = env_vars_read();
    assert!(
        read_vars.len() > 15,
        "only {read_vars:?} found: is the extraction broken?"
    );
    for var in &read_vars {
        if !documented.contains_key(var) {
            problems.push(format!(
                "the code reads {var}; README's environment table does not list it"
            ));
        }
    }
    let tree = commands();
    for (var, flags) in &documented {
        if !read_vars.contains(var) && !code.contains(&format!("\"{var}\"")) && !code.contains(var) {
            problems.push(format!(
                "README's environment table lists {var}, which the code does not read"
            ));
        }
        for flag in flags.iter().filter(|f| f.starts_with("--")) {
            let env = tree
                .values()
                .filter_map(|c| find_arg(c, flag))
                .find_map(|a| a.get_env());
            if env.map(|e| e.to_string_lossy().into_owned()).as_deref() != Some(var.as_str()) {
                problems.push(format!(
                    "README's environment table gives {var} to {flag}, whose variable is {env:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The text of the Markdown section that starts with `heading`, up to the next heading of the
/// same or a higher level.
fn section<'t>(text: &'t str, heading: &str) -> &'t str {
    let start = text
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| line.trim() == heading || line.starts_with(&format!("{heading} ")))
        .map(|(at, _)| at)
        .unwrap_or_else(|| panic!("no section `{heading}`"));
    let level = heading.split(' ').next().unwrap();
    let body = &text[start + heading.len()..];
    let end = body
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let hashes = line.split(' ').next().unwrap_or("");
            !hashes.is_empty()
                && hashes.chars().all(|c| c == '#')
                && hashes.len() <= level.len()
                && line.contains(' ')
        })
        .map_or(body.len(), |(at, _)| at);
    &body[..end]
}

/// The body rows of the Markdown tables in `text`, as cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut header = true;
    for line in text.lines() {
        if !line.starts_with('|') {
            header = true;
            continue;
        }
        let cells = table_cells(line);
        if cells.iter().all(|c| c.chars().all(|ch| "-:".contains(ch))) {
            header = false;
            continue;
        }
        if !header {
            rows.push(cells);
        }
    }
    rows
}

/// The cells of a table row; a `|` inside a code span is part of the cell.
fn table_cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut code = false;
    for c in line.trim().trim_start_matches('|').trim_end_matches('|').chars() {
        match c {
            '`' => code = !code,
            '|' if !code => {
                cells.push(String::new());
                continue;
            }
            _ => {}
        }
        cells.last_mut().unwrap().push(c);
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

fn spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(String::from).collect()
}

fn first_code(text: &str) -> Option<String> {
    spans(text).into_iter().next()
}

/// docs/API.md's table of `--output json` events has one example line per event: each is an
/// event of `progress::Event` with exactly the fields the code writes, and every event is there.
#[test]
fn docs_json_events_are_the_ones_nixfly_emits() {
    use nixfly::progress::{Event, LayerOutcome};
    let api = read("docs/API.md");
    let json_section = section(&api, "## JSON output");
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for row in table_rows(json_section) {
        let Some(name) = first_code(&row[0]) else { continue };
        let Some(example) = row.get(1).and_then(|c| first_code(c)) else {
            continue;
        };
        if name == "outcome" || !example.starts_with('{') {
            continue;
        }
        documented.insert(name.clone());
        let value: serde_json::Value = match serde_json::from_str(&example) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{name}: example {example} is not JSON: {e}"));
                continue;
            }
        };
        if value["event"] != name.as_str() {
            problems.push(format!("{name}: its example is a {} event", value["event"]));
        }
        match serde_json::from_value::<Event>(value.clone()) {
            Err(e) => problems.push(format!(
                "{name}: example {example} is not an event nixfly writes: {e}"
            )),
            Ok(event) => {
                let written = serde_json::to_value(&event).unwrap();
                let keys =
                    |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
                if keys(&written) != keys(&value) {
                    problems.push(format!(
                        "{name}: nixfly writes the fields {:?}, the example has {:?}",
                        keys(&written),
                        keys(&value)
                    ));
                }
            }
        }
    }
    // Every variant: serde names them all when asked for one that does not exist.
    let variants = |err: String| -> BTreeSet<String> {
        spans(err.split_once("expected").map_or("", |(_, rest)| rest))
            .into_iter()
            .collect()
    };
    let events = variants(
        serde_json::from_str::<Event>(r#"{"event":"?"}"#)
            .unwrap_err()
            .to_string(),
    );
    assert!(events.len() > 5, "variant names not found: {events:?}");
    if events != documented {
        problems.push(format!(
            "docs/API.md lacks the events {:?}; the code has no {:?}",
            events.difference(&documented).collect::<Vec<_>>(),
            documented.difference(&events).collect::<Vec<_>>()
        ));
    }
    let outcomes = variants(
        serde_json::from_str::<LayerOutcome>(r#""?""#)
            .unwrap_err()
            .to_string(),
    );
    let outcome_row = table_rows(json_section)
        .into_iter()
        .find(|row| first_code(&row[0]).as_deref() == Some("outcome"))
        .expect("docs/API.md's `outcome` row");
    let documented_outcomes: BTreeSet<String> = spans(&outcome_row[1]).into_iter().collect();
    if outcomes != documented_outcomes {
        problems.push(format!(
            "layer_done outcomes: the code has {outcomes:?}, docs/API.md {documented_outcomes:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/API.md's JSON events and src/progress differ:\n{}",
        problems.join("\n")
    );
}

/// The attributes a Nix function accepts, with the source text of their defaults (`None`:
/// required): the checkArgs spec of mkFlyDeploy or mkLayerPlan.
fn nix_spec_arguments(path: &str) -> BTreeMap<String, Option<String>> {
    let text = read(path);
    let body = &text[text.find("\n  spec = {\n").expect("a checkArgs spec")..];
    let body = &body[..body.find("\n  };\n").expect("the end of the spec")];
    let mut args = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in body.lines() {
        if let Some(name) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(" = {")) {
            if !name.starts_with(' ') {
                current = Some(name.to_string());
                args.insert(name.to_string(), None);
            }
        } else if let (Some(name), Some(default)) = (&current, line.strip_prefix("      default = ")) {
            args.insert(name.clone(), Some(default.trim_end_matches(';').to_string()));
        }
    }
    args
}

/// docs/API.md's attribute table of `function`: name, required (`yes` or other), default cell.
fn documented_arguments(api: &str, heading: &str) -> BTreeMap<String, (String, String)> {
    table_rows(section(api, heading))
        .into_iter()
        .filter(|row| row.len() >= 4)
        .map(|row| {
            (
                first_code(&row[0]).expect("an attribute name"),
                (row[1].clone(), row[3].clone()),
            )
        })
        .collect()
}

#[test]
fn docs_nix_arguments_are_the_ones_the_nix_code_accepts() {
    let api = read("docs/API.md");
    let mut problems = Vec::new();
    for (function, heading, code) in [
        (
            "mkFlyDeploy",
            "### Attributes",
            nix_spec_arguments("nix/lib/mkFlyDeploy.nix"),
        ),
        (
            "mkLayerPlan",
            "## `mkLayerPlan`",
            nix_spec_arguments("nix/lib/mkLayerPlan.nix"),
        ),
    ] {
        assert!(
            code.len() >= 5,
            "{function}: arguments not found in the Nix code: {code:?}"
        );
        let docs = documented_arguments(&api, heading);
        for (name, default) in &code {
            let Some((required, cell)) = docs.get(name) else {
                problems.push(format!(
                    "{function} accepts `{name}`; docs/API.md does not list it"
                ));
                continue;
            };
            match default {
                None if required != "yes" => problems.push(format!(
                    "{function}: `{name}` is required, docs/API.md says {required:?}"
                )),
                None if !cell.is_empty() => problems.push(format!(
                    "{function}: `{name}` has no default, docs/API.md says {cell:?}"
                )),
                Some(_) if required == "yes" => problems.push(format!(
                    "{function}: `{name}` is optional, docs/API.md says it is required"
                )),
                Some(default) => {
                    let normal = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
                    if first_code(cell).map(|c| normal(&c)) != Some(normal(default)) {
                        problems.push(format!("{function}: `{name}` defaults to `{default}`, docs/API.md's default starts {cell:?}"));
                    }
                }
                None => {}
            }
        }
        for name in docs.keys() {
            if !code.contains_key(name) {
                problems.push(format!(
                    "docs/API.md lists {function}'s `{name}`, which the Nix code does not accept"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/API.md and nix/lib differ:\n{}",
        problems.join("\n")
    );
}

/// The field names serde lists when it meets an unknown field at `pointer` of a settings file.
fn settings_struct_fields(pointer: &[&str]) -> BTreeSet<String> {
    let mut value = serde_json::json!({ "version": 1, "app": "demo" });
    let mut target = &mut value;
    for key in pointer {
        target = target
            .as_object_mut()
            .unwrap()
            .entry(*key)
            .or_insert(serde_json::json!({}));
    }
    target["no_such_field"] = serde_json::json!(1);
    let err = nixfly::settings::Settings::parse(Path::new("s.json"), &value.to_string()).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    let expected = chain
        .split_once("expected")
        .unwrap_or_else(|| panic!("no field list in: {chain}"))
        .1;
    spans(expected).into_iter().collect()
}

/// `Default: ...` of a help text or schema description, as the value it names: the part after
/// the last `else`, first word, without backticks, angle brackets or a closing full stop.
fn default_value(text: &str) -> Option<String> {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let after = text.split_once("Default: ")?.1;
    let after = after.split(". ").next().unwrap();
    let after = after.rsplit_once(" else ").map_or(after, |(_, v)| v);
    let word = after.split_whitespace().next()?;
    Some(
        word.trim_end_matches(['.', ',', ';', ')'])
            .replace(['`', '<', '>'], ""),
    )
}

#[test]
fn docs_settings_fields_agree_with_schema_code_flags_and_defaults() {
    let schema: serde_json::Value = serde_json::from_str(&read("docs/settings.schema.json")).unwrap();
    let mut problems = Vec::new();
    // Schema properties = the structs' fields, level by level.
    let mut leaves = BTreeMap::new();
    for pointer in [&[][..], &["push"], &["rollout"]] {
        let mut props = &schema;
        for key in pointer {
            props = &props["properties"][key];
        }
        let names: BTreeSet<String> = props["properties"].as_object().unwrap().keys().cloned().collect();
        let code = settings_struct_fields(pointer);
        if names != code {
            problems.push(format!(
                "settings {pointer:?}: schema has {names:?}, src/settings.rs {code:?}"
            ));
        }
        for name in names {
            let prop = &props["properties"][&name];
            if prop.get("properties").is_none() {
                let path = pointer
                    .iter()
                    .map(|s| s.to_string())
                    .chain([name])
                    .collect::<Vec<_>>()
                    .join(".");
                leaves.insert(path, prop["description"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let tree = commands();
    let deploy = &tree["nixfly deploy"];
    let api = read("docs/API.md");
    let attributes = documented_arguments(&api, "### Attributes");
    let rows = table_rows(section(&api, "## The settings file"));
    let documented: BTreeSet<String> = rows.iter().filter_map(|r| first_code(&r[0])).collect();
    let schema_fields: BTreeSet<String> = leaves.keys().cloned().collect();
    if documented != schema_fields {
        problems.push(format!(
            "docs/API.md's settings table has {documented:?}, the schema {schema_fields:?}"
        ));
    }
    for row in &rows {
        let Some(field) = first_code(&row[0]) else {
            continue;
        };
        let description = leaves.get(&field).cloned().unwrap_or_default();
        // The flag the field defaults: the same in docs/API.md and the schema, and deploy's.
        let doc_flag = row.get(2).and_then(|c| first_code(c));
        let schema_flag = description
            .split_once("(flag: ")
            .map(|(_, r)| r.split([')', ',']).next().unwrap().to_string());
        if doc_flag != schema_flag {
            problems.push(format!(
                "{field}: docs/API.md names the flag {doc_flag:?}, the schema {schema_flag:?}"
            ));
        }
        let Some(flag) = schema_flag else { continue };
        let Some(arg) = find_arg(deploy, &flag) else {
            problems.push(format!("{field}: deploy has no {flag}"));
            continue;
        };
        let env = description
            .split_once("env: ")
            .map(|(_, r)| r.split(')').next().unwrap().to_string());
        if let Some(env) = env
            && arg.get_env().map(|e| e.to_string_lossy().into_owned()) != Some(env.clone())
        {
            problems.push(format!(
                "{field}: the schema says {flag} reads {env}, it reads {:?}",
                arg.get_env()
            ));
        }
        // Its default: the flag's help, the schema and the mkFlyDeploy attribute say the same.
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (Some(from_help), Some(from_schema)) = (default_value(&help), default_value(&description)) else {
            continue;
        };
        if from_help != from_schema {
            problems.push(format!(
                "{field}: {flag}'s help defaults to {from_help:?}, the schema to {from_schema:?}"
            ));
        }
        let attribute = first_code(&row[1]).unwrap_or_default();
        if let Some((_, cell)) = attributes.get(&attribute) {
            // `null` (fly.toml, else 5m): what the null means.
            let after_null = cell
                .split_once("`null`")
                .map_or("", |(_, r)| r)
                .trim_start_matches([':', ' ', '(']);
            let from_api = default_value(&format!("Default: {after_null}"));
            if from_api.as_deref() != Some(from_schema.as_str()) {
                problems.push(format!("{field}: mkFlyDeploy's `{attribute}` defaults to {from_api:?} in docs/API.md, the schema to {from_schema:?}"));
            }
        } else {
            problems.push(format!("{field}: docs/API.md's settings table names the attribute {attribute:?}, which its attribute table lacks"));
        }
    }
    assert!(
        problems.is_empty(),
        "the settings docs, schema and code differ:\n{}",
        problems.join("\n")
    );
}

/// The fly.toml sections README says a deploy applies (`[processes]`, `[[vm]]`, `[build]
/// compression`, ...) and the top-level keys of its list are read by the parser: given to it,
/// none is an unknown key.
#[test]
fn docs_fly_toml_sections_are_read_by_the_parser() {
    let readme = read("README.md");
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for doc in DOCS {
        for snippet in code_snippets(&read(doc)) {
            if snippet.starts_with('[')
                && snippet
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || "[]_ ".contains(c))
            {
                keys.insert(snippet);
            }
        }
    }
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let list_start = readme
        .find("every deploy rebuilds each machine's config from fly.toml")
        .expect("README's fly.toml list");
    let list = &readme[list_start..list_start + readme[list_start..].find("with flyctl's rules").unwrap()];
    let top_level: Vec<String> = spans(list).into_iter().filter(|s| !s.starts_with('[')).collect();
    assert!(keys.len() > 10 && top_level.len() >= 3, "{keys:?} {top_level:?}");
    let mut problems = Vec::new();
    // A wrong value for a key it reads is an error: known. Only an unknown key is a warning.
    let mut check = |toml: String| {
        if let Ok((_, warnings)) = nixfly::fly::appconfig::AppConfig::parse(&toml, Path::new("fly.toml")) {
            for w in warnings.iter().filter(|w| w.message.contains("unknown key")) {
                problems.push(format!(
                    "README names it, the parser does not know it: {w}\n{toml}"
                ));
            }
        }
    };
    for key in &keys {
        let (table, field) = key
            .split_once("] ")
            .map_or((key.as_str(), None), |(t, f)| (t, Some(f)));
        let table = if table.ends_with(']') {
            table.to_string()
        } else {
            format!("{table}]")
        };
        let field = field.map(|f| format!("{f} = \"zzz\"\n")).unwrap_or_default();
        check(format!("app = \"demo\"\n{table}\n{field}"));
    }
    for key in &top_level {
        check(format!("app = \"demo\"\n{key} = \"zzz\"\n"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// docs/layer-plan.md's schema example is a plan nixfly reads (every field it shows is one
/// `LayerPlan` has, with the type it has), nixfly writes no field the example lacks, and each
/// field is explained in the table under it.
#[test]
fn docs_layer_plan_schema_is_the_one_nixfly_reads_and_writes() {
    let doc = read("docs/layer-plan.md");
    let schema = section(&doc, "## Schema (version 1)");
    let start = schema.find("```json\n").expect("the schema's JSON example") + "```json\n".len();
    let example = &schema[start..start + schema[start..].find("```").unwrap()];
    // Placeholders become values of the right form.
    let example = example.replace("\"sha256:...\"", &format!("\"sha256:{}\"", "0".repeat(64)));
    let written: serde_json::Value = serde_json::from_str(&example).expect("the example is JSON");
    let plan: nixfly::layer::plan::LayerPlan = serde_json::from_value(written.clone())
        .unwrap_or_else(|e| panic!("docs/layer-plan.md's example is not a plan nixfly reads: {e}"));
    fn keys(value: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.insert(format!("{path}{k}"));
                    keys(v, &format!("{path}{k}."), out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    keys(item, &format!("{}[].", path.trim_end_matches('.')), out);
                }
            }
            _ => {}
        }
    }
    let (mut shown, mut made) = (BTreeSet::new(), BTreeSet::new());
    keys(&written, "", &mut shown);
    keys(&serde_json::to_value(&plan).unwrap(), "", &mut made);
    assert_eq!(
        made, shown,
        "nixfly writes plans with other fields than docs/layer-plan.md shows"
    );
    let explained: BTreeSet<String> = table_rows(schema)
        .iter()
        .flat_map(|row| row.iter().flat_map(|c| spans(c)))
        .collect();
    // `layers[].source.type` is explained as `source.type`, `layers[]` or `type`; `source` by
    // `source.type`.
    let is_explained = |key: &str| {
        let parts: Vec<&str> = key.split('.').collect();
        (0..parts.len()).any(|i| {
            let suffix = parts[i..].join(".");
            explained
                .iter()
                .any(|s| *s == suffix || *s == format!("{suffix}[]") || s.starts_with(&format!("{suffix}.")))
        })
    };
    let unexplained: Vec<&String> = shown.iter().filter(|k| !is_explained(k)).collect();
    assert!(
        unexplained.is_empty(),
        "docs/layer-plan.md's field table does not explain {unexplained:?}"
    );
}
