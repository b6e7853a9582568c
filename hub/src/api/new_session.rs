//! The body of `POST /sessions` (seed 004 §4.1) and its validation: pure functions, so every rule
//! is unit-tested without HTTP.
//!
//! ```json
//! {"vibeText": "…", "template": "marketplace" | "saas",
//!  "options": {"enableAnalytics": bool, "enableDriftSentinel": bool,
//!              "environmentMode": "branch" | "project"}}
//! ```
//!
//! Every problem is reported at once (`context.fields`, keyed by JSON path). Unknown fields are
//! refused rather than ignored: a misspelt option (`enableAnalytic`) would otherwise silently
//! build something else than asked.

use serde_json::{Map, Value, json};

use crate::api::app_error::AppError;

/// Longest `vibeText`, in characters.
pub const MAX_VIBE_CHARS: usize = 10_000;

/// The templates a build can start from (seed 004 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Listings, bids, orders.
    Marketplace,
    /// Organizations, memberships, projects, subscriptions.
    Saas,
}

impl Template {
    /// Every template, in the order error messages list them.
    pub const ALL: [Template; 2] = [Template::Marketplace, Template::Saas];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Marketplace => "marketplace",
            Self::Saas => "saas",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Where the build provisions its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvironmentMode {
    /// A branch of an existing project (fast). The default.
    #[default]
    Branch,
    /// A new project (slow).
    Project,
}

impl EnvironmentMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Branch => "branch",
            Self::Project => "project",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "branch" => Some(Self::Branch),
            "project" => Some(Self::Project),
            _ => None,
        }
    }
}

/// Build options, with their defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuildOptions {
    /// Configure analytics (the `configure_analytics` step). Default false.
    pub enable_analytics: bool,
    /// Schedule drift checks on the result. Default false.
    pub enable_drift_sentinel: bool,
    /// Branch or project. Default branch.
    pub environment_mode: EnvironmentMode,
}

impl BuildOptions {
    /// The stored form: every option spelled out, so readers never guess a default.
    pub fn to_json(self) -> Value {
        json!({
            "enableAnalytics": self.enable_analytics,
            "enableDriftSentinel": self.enable_drift_sentinel,
            "environmentMode": self.environment_mode.as_str(),
        })
    }

    /// Reads stored options leniently (a row an external writer created may hold anything):
    /// missing or mistyped options take their defaults.
    pub fn from_stored(v: &Value) -> Self {
        Self {
            enable_analytics: v["enableAnalytics"].as_bool().unwrap_or(false),
            enable_drift_sentinel: v["enableDriftSentinel"].as_bool().unwrap_or(false),
            environment_mode: v["environmentMode"]
                .as_str()
                .and_then(EnvironmentMode::parse)
                .unwrap_or_default(),
        }
    }
}

/// A valid `POST /sessions` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The description, trimmed.
    pub vibe_text: String,
    /// The template.
    pub template: Template,
    /// Options with defaults filled in.
    pub options: BuildOptions,
}

/// Problems found so far, keyed by JSON path.
#[derive(Default)]
struct Problems(Map<String, Value>);

impl Problems {
    fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0
            .insert(field.to_owned(), Value::String(problem.into()));
    }
}

fn templates_list() -> String {
    Template::ALL
        .iter()
        .map(|t| format!("\"{}\"", t.as_str()))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Validates a `POST /sessions` body.
pub fn parse(body: &Value) -> Result<SessionRequest, AppError> {
    let mut problems = Problems::default();
    let Some(obj) = body.as_object() else {
        problems.add("body", "must be a JSON object");
        return Err(invalid(problems));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "vibeText" | "template" | "options") {
            problems.add(key, "is not a known field");
        }
    }
    let vibe_text = vibe_text(obj.get("vibeText"), &mut problems);
    let template = match obj.get("template") {
        None | Some(Value::Null) => {
            problems.add("template", format!("is required: {}", templates_list()));
            None
        }
        Some(v) => {
            let t = v.as_str().and_then(Template::parse);
            if t.is_none() {
                problems.add("template", format!("must be {}", templates_list()));
            }
            t
        }
    };
    let options = options(obj.get("options"), &mut problems);
    match (vibe_text, template) {
        (Some(vibe_text), Some(template)) if problems.0.is_empty() => Ok(SessionRequest {
            vibe_text,
            template,
            options,
        }),
        _ => Err(invalid(problems)),
    }
}

fn invalid(problems: Problems) -> AppError {
    AppError::validation("The session request is invalid", problems.0)
}

fn vibe_text(v: Option<&Value>, problems: &mut Problems) -> Option<String> {
    let field = "vibeText";
    let Some(v) = v.filter(|v| !v.is_null()) else {
        problems.add(field, "is required");
        return None;
    };
    let Some(s) = v.as_str() else {
        problems.add(field, "must be a string");
        return None;
    };
    let s = s.trim();
    if s.is_empty() {
        problems.add(field, "must not be empty");
        return None;
    }
    if s.chars().count() > MAX_VIBE_CHARS {
        problems.add(
            field,
            format!("must be at most {MAX_VIBE_CHARS} characters"),
        );
        return None;
    }
    if s.contains('\0') {
        // Postgres text cannot hold NUL.
        problems.add(field, "must not contain NUL characters");
        return None;
    }
    Some(s.to_owned())
}

fn options(v: Option<&Value>, problems: &mut Problems) -> BuildOptions {
    let mut out = BuildOptions::default();
    let obj = match v {
        None | Some(Value::Null) => return out,
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            problems.add("options", "must be an object");
            return out;
        }
    };
    for (key, value) in obj {
        let path = format!("options.{key}");
        match key.as_str() {
            "enableAnalytics" | "enableDriftSentinel" => match value.as_bool() {
                Some(b) if key == "enableAnalytics" => out.enable_analytics = b,
                Some(b) => out.enable_drift_sentinel = b,
                None => problems.add(&path, "must be a boolean"),
            },
            "environmentMode" => match value.as_str().and_then(EnvironmentMode::parse) {
                Some(m) => out.environment_mode = m,
                None => problems.add(&path, "must be \"branch\" or \"project\""),
            },
            _ => problems.add(&path, "is not a known option"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::app_error::ErrorCode;

    fn fields(e: AppError) -> Value {
        assert_eq!(e.code, ErrorCode::ValidationError);
        e.context.unwrap()["fields"].clone()
    }

    #[test]
    fn a_full_body_parses() {
        let r = parse(&json!({
            "vibeText": "  a marketplace for vintage synths  ",
            "template": "marketplace",
            "options": {"enableAnalytics": true, "enableDriftSentinel": false, "environmentMode": "project"},
        }))
        .unwrap();
        assert_eq!(r.vibe_text, "a marketplace for vintage synths");
        assert_eq!(r.template, Template::Marketplace);
        assert!(r.options.enable_analytics);
        assert_eq!(r.options.environment_mode, EnvironmentMode::Project);
    }

    #[test]
    fn options_are_optional_and_defaults_are_spelled_out() {
        let r = parse(&json!({"vibeText": "x", "template": "saas"})).unwrap();
        assert_eq!(r.options, BuildOptions::default());
        assert_eq!(
            r.options.to_json(),
            json!({"enableAnalytics": false, "enableDriftSentinel": false, "environmentMode": "branch"})
        );
        assert!(parse(&json!({"vibeText": "x", "template": "saas", "options": null})).is_ok());
        assert!(parse(&json!({"vibeText": "x", "template": "saas", "options": {}})).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let f = fields(
            parse(&json!({
                "vibeText": 5,
                "template": "blog",
                "options": {"enableAnalytics": "yes", "environmentMode": "cloud", "colour": 1},
                "extra": true,
            }))
            .unwrap_err(),
        );
        assert_eq!(f["vibeText"], "must be a string");
        assert_eq!(f["template"], "must be \"marketplace\" or \"saas\"");
        assert_eq!(f["options.enableAnalytics"], "must be a boolean");
        assert_eq!(
            f["options.environmentMode"],
            "must be \"branch\" or \"project\""
        );
        assert_eq!(f["options.colour"], "is not a known option");
        assert_eq!(f["extra"], "is not a known field");
        assert_eq!(f.as_object().unwrap().len(), 6);
    }

    #[test]
    fn required_empty_long_and_nul_texts() {
        let f = fields(parse(&json!({})).unwrap_err());
        assert_eq!(f["vibeText"], "is required");
        assert!(f["template"].as_str().unwrap().starts_with("is required"));
        let f = fields(parse(&json!({"vibeText": "   ", "template": "saas"})).unwrap_err());
        assert_eq!(f["vibeText"], "must not be empty");
        let long = "é".repeat(MAX_VIBE_CHARS + 1);
        let f = fields(parse(&json!({"vibeText": long, "template": "saas"})).unwrap_err());
        assert_eq!(f["vibeText"], "must be at most 10000 characters");
        assert!(
            parse(&json!({"vibeText": "é".repeat(MAX_VIBE_CHARS), "template": "saas"})).is_ok()
        );
        let f = fields(parse(&json!({"vibeText": "a\u{0}b", "template": "saas"})).unwrap_err());
        assert_eq!(f["vibeText"], "must not contain NUL characters");
        let f = fields(
            parse(&json!({"vibeText": "x", "template": "saas", "options": []})).unwrap_err(),
        );
        assert_eq!(f["options"], "must be an object");
        let f = fields(parse(&json!([1])).unwrap_err());
        assert_eq!(f["body"], "must be a JSON object");
    }

    #[test]
    fn stored_options_are_read_leniently() {
        let o = BuildOptions::from_stored(&json!({"enableAnalytics": true, "environmentMode": 3}));
        assert!(o.enable_analytics);
        assert_eq!(o.environment_mode, EnvironmentMode::Branch);
        assert_eq!(
            BuildOptions::from_stored(&Value::Null),
            BuildOptions::default()
        );
    }
}
