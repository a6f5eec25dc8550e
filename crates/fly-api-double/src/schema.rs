//! The Machines API OpenAPI file as a request validator: finds the operation a request targets
//! and checks its query parameters and JSON body against the schemas, resolving `$ref`s into
//! `components/schemas`.
//!
//! Stricter than a generic JSON Schema validator in one way, on purpose: the spec never says
//! `additionalProperties: false`, so Fly's Go server silently drops a misspelt field
//! (`skip_lauch`), and a test against a lenient double would pass while the real deploy does
//! something else. Here a property the schema does not declare is a violation.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde_json::Value;

static SPEC: LazyLock<Value> = LazyLock::new(|| {
    let mut spec = serde_json::from_str(include_str!("../machines-openapi.json"))
        .expect("crates/fly-api-double/machines-openapi.json is valid JSON");
    amend_lease_call(&mut spec);
    amend_destroy_call(&mut spec);
    spec
});

/// A lease call as fly-go makes it: `?ttl=<seconds>` and no body, both of which the spec leaves
/// out (it documents a required `CreateLeaseRequest` body). fly-go acquires and refreshes leases
/// that way (`flaps/flaps_machines.go`, `AcquireLease`, `RefreshLease`; NOTES.md step 6), so
/// Fly takes it: the spec's `Machines_create_lease` gains an integer `ttl` query parameter and
/// an optional body, and the validator stays the spec's.
fn amend_lease_call(spec: &mut Value) {
    let ttl = "Seconds the lease lasts (fly-go's AcquireLease and RefreshLease)";
    if let Some(op) = add_query_parameter(spec, "post", "Machines_create_lease", "ttl", "integer", ttl) {
        op["requestBody"]["required"] = Value::Bool(false);
    }
}

/// A destroy as fly-go asks for it: `?kill=<bool>` (`flaps/flaps_machines.go`, `Destroy`),
/// which flyctl sends on every deploy that destroys a machine (`internal/command/deploy/plan.go`,
/// `destroyMachine`), where the spec documents only `force`. The spec's `Machines_delete`
/// gains a boolean `kill` query parameter.
fn amend_destroy_call(spec: &mut Value) {
    let kill = "Kill the machine if it's running (fly-go's Destroy)";
    add_query_parameter(spec, "delete", "Machines_delete", "kill", "boolean", kill);
}

/// Add a query parameter to the operation `id` (under HTTP `method`); returns the operation.
fn add_query_parameter<'a>(
    spec: &'a mut Value,
    method: &str,
    id: &str,
    name: &str,
    kind: &str,
    description: &str,
) -> Option<&'a mut Value> {
    let op = spec["paths"]
        .as_object_mut()?
        .values_mut()
        .filter_map(|item| item.get_mut(method))
        .find(|op| op["operationId"] == id)?;
    let parameter = serde_json::json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": { "type": kind }
    });
    match op["parameters"].as_array_mut() {
        Some(params) => params.push(parameter),
        None => op["parameters"] = Value::Array(vec![parameter]),
    }
    Some(op)
}

/// The parsed spec (with the amendments above), loaded once per process.
pub fn spec() -> &'static Value {
    &SPEC
}

/// One operation of the spec matched against a concrete request path.
pub struct Operation {
    pub id: String,
    /// The path template, e.g. `/v1/apps/{app_name}/machines/{machine_id}`.
    pub template: String,
    /// Path parameters by name, in template order.
    pub params: Vec<(String, String)>,
    op: &'static Value,
}

impl Operation {
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no path parameter {name}", self.template))
    }
}

/// The operation for `method path`, if the spec has one. Literal segments win over
/// parameters, so `/machines/{id}/lease` never matches `/machines/{id}/metadata/{key}`.
pub fn find_operation(method: &str, path: &str) -> Option<Operation> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut best: Option<(usize, Operation)> = None;
    for (template, item) in spec()["paths"].as_object()? {
        let Some(op) = item.get(method.to_ascii_lowercase()) else {
            continue;
        };
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        let mut literal = 0;
        let matched = parts.iter().zip(&segments).all(|(part, seg)| {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                params.push((name.to_string(), percent_decode(seg)));
                !seg.is_empty()
            } else {
                literal += 1;
                part == seg
            }
        });
        if matched && best.as_ref().is_none_or(|(l, _)| literal > *l) {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            best = Some((
                literal,
                Operation {
                    id,
                    template: template.clone(),
                    params,
                    op,
                },
            ));
        }
    }
    best.map(|(_, op)| op)
}

fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Every way the request breaks the operation's schema, as readable sentences.
pub fn validate_request(
    op: &Operation,
    query: &[(String, String)],
    headers: &axum::http::HeaderMap,
    content_type: Option<&str>,
    body: Option<&Value>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let params = op.op["parameters"].as_array().cloned().unwrap_or_default();
    for (name, value) in query {
        let Some(param) = params
            .iter()
            .find(|p| p["in"] == "query" && query_name_matches(p["name"].as_str(), name))
        else {
            errors.push(format!("query parameter `{name}` is not defined for {}", op.id));
            continue;
        };
        let schema = &param["schema"];
        // The spec documents comma-separated lists for some string parameters (wait?state=).
        let comma_list = param["description"]
            .as_str()
            .is_some_and(|d| d.contains("comma-separated") || d.contains("comma separated"));
        let values: Vec<&str> = if comma_list {
            value.split(',').collect()
        } else {
            vec![value.as_str()]
        };
        for v in values {
            match query_value(schema, v) {
                Some(json) => validate(schema, &json, &format!("query `{name}`"), &mut errors),
                None => errors.push(format!(
                    "query `{name}`: `{v}` is not a valid {}",
                    schema["type"].as_str().unwrap_or("value")
                )),
            }
        }
    }
    for param in &params {
        let name = param["name"].as_str().unwrap_or_default();
        if param["required"] != true {
            continue;
        }
        let present = match param["in"].as_str() {
            Some("query") => query.iter().any(|(n, _)| n == name),
            Some("header") => headers.contains_key(name),
            _ => true,
        };
        if !present {
            errors.push(format!("required {} parameter `{name}` is missing", param["in"]));
        }
    }
    let request_body = &op.op["requestBody"];
    match (body, request_body.is_object()) {
        (Some(_), false) => errors.push(format!("{} takes no request body", op.id)),
        (None, true) if request_body["required"] == true => {
            errors.push(format!("{} requires a JSON request body", op.id));
        }
        (Some(body), true) => {
            if !content_type.is_some_and(|c| c.starts_with("application/json")) {
                errors.push(format!(
                    "request body sent with Content-Type {:?}, expected application/json",
                    content_type.unwrap_or("(none)")
                ));
            }
            validate(
                &request_body["content"]["application/json"]["schema"],
                body,
                "body",
                &mut errors,
            );
        }
        (None, _) => {}
    }
    errors
}

/// The JSON schema the spec gives for this operation's answer with `status`, if any.
pub fn response_schema(op: &Operation, status: u16) -> Option<&'static Value> {
    op.op["responses"][status.to_string()]["content"]["application/json"].get("schema")
}

/// `metadata.{key}` in the spec stands for any `metadata.<key>` filter.
fn query_name_matches(spec_name: Option<&str>, name: &str) -> bool {
    match spec_name {
        Some(spec_name) => match spec_name.strip_suffix("{key}") {
            Some(prefix) => name.len() > prefix.len() && name.starts_with(prefix),
            None => spec_name == name,
        },
        None => false,
    }
}

fn query_value(schema: &Value, raw: &str) -> Option<Value> {
    match schema["type"].as_str() {
        Some("boolean") => match raw {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        Some("integer") => raw.parse::<i64>().ok().map(Value::from),
        Some("number") => raw.parse::<f64>().ok().map(Value::from),
        _ => Some(Value::String(raw.to_string())),
    }
}

/// A named schema from `components/schemas`.
pub fn component(name: &str) -> &'static Value {
    let schema = &spec()["components"]["schemas"][name];
    assert!(schema.is_object(), "the spec has no schema {name}");
    schema
}

fn resolve(schema: &Value) -> &Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unsupported $ref {r}"));
            component(name)
        }
        None => schema,
    }
}

/// Validate `value` against `schema`, appending `at: reason` lines to `errors`. Handles the
/// subset of OpenAPI 3.0 the Machines spec uses (type, properties, required, items,
/// additionalProperties, enum, allOf, minimum/maximum, nullable).
pub fn validate(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(schema);
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            validate_shallow(part, value, at, errors);
        }
    }
    validate_shallow(schema, value, at, errors);
    if value.is_object() {
        check_unknown_properties(schema, value, at, errors);
    }
}

/// Everything except the allOf expansion and the unknown-property check, which need the
/// union of all allOf branches.
fn validate_shallow(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(schema);
    if value.is_null() {
        if schema["nullable"] != true && (schema.get("type").is_some() || schema.get("$ref").is_some()) {
            errors.push(format!(
                "{at}: null is not allowed (the schema does not say nullable; omit the field instead)"
            ));
        }
        return;
    }
    if let Some(ty) = schema["type"].as_str()
        && !type_matches(ty, value)
        && !documented_exception(schema, value)
    {
        errors.push(format!("{at}: expected {ty}, got {}", describe(value)));
        return;
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
        && !documented_exception(schema, value)
    {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        errors.push(format!("{at}: {value} is not one of {}", list.join(", ")));
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            errors.push(format!("{at}: {n} is below the minimum {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            errors.push(format!("{at}: {n} is above the maximum {}", schema["maximum"]));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().unwrap_or_default();
            if !object.contains_key(key) {
                errors.push(format!("{at}: required property `{key}` is missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, item) in object {
            let here = format!("{at}.{key}");
            if let Some(prop) = properties.and_then(|p| p.get(key)) {
                validate(prop, item, &here, errors);
            } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                validate(extra, item, &here, errors);
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

fn check_unknown_properties(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(known) = known_properties(schema) else {
        return;
    };
    for key in value.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !known.contains(key.as_str()) {
            errors.push(format!(
                "{at}.{key}: not a property of this schema (Fly would silently ignore it)"
            ));
        }
    }
}

/// The declared property names, or None when the object is free-form (no properties at all,
/// or `additionalProperties`).
fn known_properties(schema: &Value) -> Option<BTreeSet<&str>> {
    let schema = resolve(schema);
    if schema.get("additionalProperties").is_some() {
        return None;
    }
    let mut known: BTreeSet<&str> = schema["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut constrained = schema["properties"].is_object();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        known.extend(known_properties(part)?);
        constrained = true;
    }
    constrained.then_some(known)
}

/// Deviations the spec itself documents in prose: `fly.MachineService.autostop` "accepts a
/// string (new format) or a boolean (old format)", and the API answers with booleans, so a
/// client that sends back the config it read sends a boolean.
fn documented_exception(schema: &Value, value: &Value) -> bool {
    value.is_boolean()
        && schema["description"]
            .as_str()
            .is_some_and(|d| d.contains("or a boolean (old format)"))
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}
