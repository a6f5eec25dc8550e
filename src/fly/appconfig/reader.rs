//! A walker over the spanned TOML tree that knows where each value came from: every getter
//! checks the type, every problem is recorded with file, line and key, and keys nobody asked
//! for become warnings. Problems are collected, not returned one by one, so a user sees every
//! mistake in fly.toml at once.

use super::{Problem, Warning};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The source text, to turn byte offsets into line numbers, and the problems found so far.
pub struct Doc<'t> {
    pub file: String,
    text: &'t str,
    pub errors: RefCell<Vec<Problem>>,
    pub warnings: RefCell<Vec<Warning>>,
}

impl<'t> Doc<'t> {
    pub fn new(file: String, text: &'t str) -> Self {
        Doc {
            file,
            text,
            errors: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
        }
    }

    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub fn error(&self, line: usize, key: &str, message: impl Into<String>) {
        self.errors.borrow_mut().push(Problem {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub fn warn(&self, line: usize, key: &str, message: impl Into<String>) {
        self.warnings.borrow_mut().push(Warning {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// How a key is named in messages: `app`, `[deploy] max_unavailable`,
/// `[services[0].ports[1]] port`.
pub fn key_name(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("[{parent}] {key}")
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// One TOML table being read. `finish` warns about the keys that were never read.
pub struct Table<'d, 't> {
    pub doc: &'d Doc<'t>,
    pub path: String,
    pub line: usize,
    table: &'d DeTable<'t>,
    used: RefCell<BTreeSet<String>>,
}

impl<'d, 't> Table<'d, 't> {
    pub fn root(doc: &'d Doc<'t>, table: &'d DeTable<'t>) -> Self {
        Table {
            doc,
            path: String::new(),
            line: 1,
            table,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    pub fn get(&self, key: &str) -> Option<Field<'d, 't>> {
        let (k, v) = self.table.get_key_value(key)?;
        self.used.borrow_mut().insert(key.to_string());
        Some(Field {
            doc: self.doc,
            parent: self.path.clone(),
            key: key.to_string(),
            key_span: k.span(),
            value: v,
        })
    }

    /// A table without any key (`[[services]]` and nothing under it).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Mark keys as known without reading them (flyctl accepts them; a deployer has no use).
    pub fn ignore(&self, keys: &[&str]) {
        let mut used = self.used.borrow_mut();
        for key in keys {
            used.insert((*key).to_string());
        }
    }

    /// Every entry, for free-form tables like `[env]` and `[processes]`.
    pub fn entries(&self) -> Vec<Field<'d, 't>> {
        self.table
            .iter()
            .map(|(k, v)| {
                self.used.borrow_mut().insert(k.get_ref().to_string());
                Field {
                    doc: self.doc,
                    parent: self.path.clone(),
                    key: k.get_ref().to_string(),
                    key_span: k.span(),
                    value: v,
                }
            })
            .collect()
    }

    pub fn finish(&self) {
        let used = self.used.borrow();
        for (k, _) in self.table.iter() {
            if !used.contains(k.get_ref().as_ref()) {
                let line = self.doc.line_of(k.span().start);
                let section = if self.path.is_empty() {
                    "fly.toml".to_string()
                } else {
                    format!("[{}]", self.path)
                };
                self.doc.warn(
                    line,
                    &key_name(&self.path, k.get_ref()),
                    format!("unknown key, ignored (not something {section} takes)"),
                );
            }
        }
    }

    // Typed shorthands: read `key` if present; a wrong type is recorded and reads as absent.

    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|f| f.string())
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|f| f.bool())
    }

    pub fn uint(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|f| f.uint())
    }

    pub fn port(&self, key: &str) -> Option<u16> {
        self.get(key).and_then(|f| f.port())
    }

    pub fn quoted_port(&self, key: &str) -> Option<u16> {
        self.get(key).and_then(|f| f.quoted_port())
    }

    pub fn strings(&self, key: &str) -> Vec<String> {
        self.get(key).and_then(|f| f.strings()).unwrap_or_default()
    }

    pub fn table(&self, key: &str) -> Option<Table<'d, 't>> {
        self.get(key).and_then(|f| f.table())
    }
}

/// One key and its value.
pub struct Field<'d, 't> {
    pub doc: &'d Doc<'t>,
    pub parent: String,
    pub key: String,
    key_span: Range<usize>,
    pub value: &'d Spanned<DeValue<'t>>,
}

impl<'d, 't> Field<'d, 't> {
    pub fn line(&self) -> usize {
        let span = self.value.span();
        // Tables opened by a header have an empty span; the key then says where they are.
        if span.is_empty() {
            self.doc.line_of(self.key_span.start)
        } else {
            self.doc.line_of(span.start)
        }
    }

    pub fn name(&self) -> String {
        key_name(&self.parent, &self.key)
    }

    pub fn path(&self) -> String {
        child_path(&self.parent, &self.key)
    }

    pub fn error(&self, message: impl Into<String>) {
        self.doc.error(self.line(), &self.name(), message);
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.doc.warn(self.line(), &self.name(), message);
    }

    pub fn wrong_type(&self, expected: &str) {
        self.error(format!(
            "expected {expected}, got {}",
            describe(self.value.get_ref())
        ));
    }

    pub fn string(&self) -> Option<String> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type("a string");
                None
            }
        }
    }

    pub fn bool(&self) -> Option<bool> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type("true or false");
                None
            }
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self.value.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error("integer out of range");
                    None
                }
            },
            _ => {
                self.wrong_type("an integer");
                None
            }
        }
    }

    pub fn uint(&self) -> Option<u64> {
        let n = self.int()?;
        if n < 0 {
            self.error(format!("must not be negative, got {n}"));
            return None;
        }
        Some(n as u64)
    }

    pub fn number(&self) -> Option<f64> {
        match self.value.get_ref() {
            DeValue::Integer(_) => self.int().map(|n| n as f64),
            DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
                Ok(x) if x.is_finite() => Some(x),
                _ => {
                    self.error(format!("expected a finite number, got {}", f.as_str()));
                    None
                }
            },
            _ => {
                self.wrong_type("a number");
                None
            }
        }
    }

    /// A TCP/UDP port: 0..=65535, a number. A number written as a string is refused: flyctl
    /// reads it as one only in `[[services]]` (see `quoted_port`) and refuses the whole fly.toml
    /// elsewhere (its config fields are integers, `internal/appconfig`).
    pub fn port(&self) -> Option<u16> {
        if let DeValue::String(s) = self.value.get_ref() {
            self.error(match s.parse::<u16>() {
                Ok(n) => format!(
                    "expected a port number, got the string {:?}: flyctl reads a quoted port only \
                     in [[services]] and refuses it here; write {n} without quotes",
                    s.as_ref()
                ),
                Err(_) => format!("expected a port number, got {:?}", s.as_ref()),
            });
            return None;
        }
        self.in_port_range(self.int()?)
    }

    /// A port that may also be written as a string, as flyctl's `castToInt` (Go's `Atoi`: no
    /// spaces) reads `[[services]]`' `internal_port` and `ports.port` (`internal/appconfig/
    /// patches.go`, `_patchService`).
    pub fn quoted_port(&self) -> Option<u16> {
        let n = match self.value.get_ref() {
            DeValue::String(s) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => {
                    self.error(format!("expected a port number, got {:?}", s.as_ref()));
                    return None;
                }
            },
            _ => self.int()?,
        };
        self.in_port_range(n)
    }

    fn in_port_range(&self, n: i64) -> Option<u16> {
        match u16::try_from(n) {
            Ok(port) => Some(port),
            Err(_) => {
                self.error(format!("{n} is not a port number (0-65535)"));
                None
            }
        }
    }

    /// An array of strings (a single string is accepted where flyctl accepts it: see callers).
    pub fn strings(&self) -> Option<Vec<String>> {
        match self.value.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => {
                            self.error(format!(
                                "expected a list of strings, found {} in it",
                                describe(other)
                            ));
                            return None;
                        }
                    }
                }
                Some(out)
            }
            _ => {
                self.wrong_type("a list of strings");
                None
            }
        }
    }

    pub fn table(&self) -> Option<Table<'d, 't>> {
        match self.value.get_ref() {
            DeValue::Table(t) => Some(Table {
                doc: self.doc,
                path: self.path(),
                line: self.line(),
                table: t,
                used: RefCell::new(BTreeSet::new()),
            }),
            _ => {
                self.wrong_type("a table");
                None
            }
        }
    }

    /// A list of tables (`[[x]]`) only: flyctl decodes these keys into Go slices with no patch
    /// before (internal/appconfig/patches.go has no `ensureArrayOfMap` for them), so one `[x]`
    /// table fails its decoding and `fly deploy` refuses the whole fly.toml.
    pub fn table_list(&self) -> Vec<Table<'d, 't>> {
        if let DeValue::Table(_) = self.value.get_ref() {
            // `services[0].machine_checks` is written `[[services.machine_checks]]`.
            let mut path = String::new();
            let mut in_index = false;
            for c in self.path().chars() {
                match c {
                    '[' => in_index = true,
                    ']' => in_index = false,
                    c if !in_index => path.push(c),
                    _ => {}
                }
            }
            self.error(format!(
                "a single table; flyctl reads only a list of tables here and refuses the whole \
                 fly.toml otherwise: write [[{path}]]"
            ));
            return Vec::new();
        }
        self.tables()
    }

    /// A list of tables (`[[x]]`); a single table (`[x]`) counts as a list of one, as flyctl
    /// reads `[mounts]`, `[vm]`, `[metrics]` and `[services]` (with their ports and checks):
    /// `ensureArrayOfMap` in internal/appconfig/patches.go.
    pub fn tables(&self) -> Vec<Table<'d, 't>> {
        match self.value.get_ref() {
            DeValue::Table(_) => self.table().into_iter().collect(),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::Table(t) => out.push(Table {
                            doc: self.doc,
                            path: format!("{}[{index}]", self.path()),
                            line: self.doc.line_of(item.span().start),
                            table: t,
                            used: RefCell::new(BTreeSet::new()),
                        }),
                        other => self.error(format!(
                            "expected a list of tables, found {} in it",
                            describe(other)
                        )),
                    }
                }
                out
            }
            _ => {
                self.wrong_type("a table or a list of tables");
                Vec::new()
            }
        }
    }
}

fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("the integer {}", i.as_str()),
        DeValue::Float(f) => format!("the number {}", f.as_str()),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(_) => "a list".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// The document as JSON (the release record's `definition`): datetimes become strings.
pub fn to_json(value: &DeValue<'_>) -> Value {
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(i.as_str().to_string())),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(|v| to_json(v.get_ref())).collect()),
        DeValue::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_json(v.get_ref())))
                .collect(),
        ),
    }
}
