//! What a simulated build does, as data: the seed 004 §6 node sequence for one session, computed
//! up front by a pure function so the order of events is testable without a runtime.
//!
//! | node | focus | writes |
//! |---|---|---|
//! | `ingest_vibe` | none | nothing (a real orchestrator stores `spec_chunks`) |
//! | `generate_plan` | none | `plan`, then `plan_created` |
//! | `provision_environment` | none | `environment`, then `environment_created` |
//! | `apply_migrations` | none, then each table | `migration_started`, then `table_created` per table |
//! | `configure_rls` | none, then each policy | `rls_enabled`, then `policy_created` per policy |
//! | `deploy_edge_functions` | each function | `edge_function_deployed` per function |
//! | `configure_analytics` (`enableAnalytics`) | the analytics view | `analytics_configured` |
//! | `finalize` | none | `outputs` + status `succeeded`, then `build_succeeded` |
//!
//! A row is written before the event that announces it, so a client reacting to an event (say,
//! `build_succeeded`) already finds the data in `GET /sessions`.

use channels::sessions::{BuildSession, SessionStatus, SessionUpdate};
use serde_json::{Value, json};

use crate::api::new_session::{BuildOptions, Template};

/// What the architect is looking at (seed 004 §5.1 `focus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Focus {
    /// `table`, `policy`, `function` or `analytics`.
    pub kind: &'static str,
    /// The resource's name.
    pub name: String,
}

/// A timeline entry to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event type (seed 004 §5.2).
    pub kind: &'static str,
    /// Human-readable line.
    pub message: String,
    /// Details.
    pub payload: Value,
}

/// One move of the architect: show presence, wait a step delay, then write.
#[derive(Debug, Clone)]
pub struct Step {
    /// The orchestrator node (presence `step`).
    pub node: &'static str,
    /// Presence `focus`; `None` for steps that work on no single resource (sent as `null`).
    pub focus: Option<Focus>,
    /// Session fields written first.
    pub update: Option<SessionUpdate>,
    /// Events appended after the update, in order.
    pub events: Vec<Event>,
}

/// A template's resources.
struct Blueprint {
    tables: &'static [&'static str],
    /// `(table, policy, command)`.
    policies: &'static [(&'static str, &'static str, &'static str)],
}

/// Seed 004 §9.1–9.2.
const MARKETPLACE: Blueprint = Blueprint {
    tables: &["profiles", "listings", "bids", "orders"],
    policies: &[
        ("profiles", "profiles_read_own", "select"),
        ("profiles", "profiles_update_own", "update"),
        ("listings", "listings_read_public", "select"),
        ("listings", "listings_write_owner", "all"),
        ("bids", "bids_read_own", "select"),
        ("bids", "bids_insert_own", "insert"),
        ("orders", "orders_read_own", "select"),
        ("orders", "orders_insert_own", "insert"),
    ],
};

/// The seed names a SaaS template without detailing it; this is its usual shape.
const SAAS: Blueprint = Blueprint {
    tables: &[
        "profiles",
        "organizations",
        "memberships",
        "projects",
        "subscriptions",
    ],
    policies: &[
        ("profiles", "profiles_read_own", "select"),
        ("profiles", "profiles_update_own", "update"),
        ("organizations", "organizations_read_member", "select"),
        ("organizations", "organizations_write_admin", "all"),
        ("memberships", "memberships_read_own", "select"),
        ("projects", "projects_read_member", "select"),
        ("projects", "projects_write_member", "all"),
        ("subscriptions", "subscriptions_read_member", "select"),
    ],
};

/// Characters per spec chunk when the vibe text is "ingested".
const CHUNK_CHARS: usize = 500;

/// The analytics wrapper function (seed 004 §9.3.0).
const ANALYTICS_VIEW: &str = "run_analytics_query";

/// The steps of `session`'s build.
pub fn script(session: &BuildSession) -> Vec<Step> {
    let template = Template::parse(&session.template).unwrap_or(Template::Marketplace);
    let options = BuildOptions::from_stored(&session.options);
    let bp = match template {
        Template::Marketplace => &MARKETPLACE,
        Template::Saas => &SAAS,
    };
    let mut functions = vec!["drift_check"];
    if options.enable_analytics {
        functions.push("analytics_query");
    }
    let chunks = session
        .vibe_text
        .chars()
        .count()
        .div_ceil(CHUNK_CHARS)
        .max(1);
    let env_ref = format!("sim-{}", &session.id.simple().to_string()[..12]);
    let policies: Vec<Value> = bp
        .policies
        .iter()
        .map(|(table, name, command)| json!({"table": table, "name": name, "command": command}))
        .collect();
    let plan = json!({
        "template": template.as_str(),
        "specChunks": chunks,
        "tables": bp.tables,
        "policies": policies,
        "functions": functions,
        "analytics": options.enable_analytics,
        "driftSentinel": options.enable_drift_sentinel,
        "simulated": true,
    });
    let environment = json!({
        "mode": options.environment_mode.as_str(),
        "ref": env_ref,
        "apiUrl": format!("https://{env_ref}.simulated.invalid"),
        "simulated": true,
    });

    let mut steps = vec![
        Step {
            node: "ingest_vibe",
            focus: None,
            update: None,
            events: vec![],
        },
        Step {
            node: "generate_plan",
            focus: None,
            update: Some(SessionUpdate {
                plan: Some(plan),
                ..SessionUpdate::default()
            }),
            events: vec![event(
                "plan_created",
                format!(
                    "Plan created from the {} template: {} tables, {} policies, {} functions",
                    template.as_str(),
                    bp.tables.len(),
                    bp.policies.len(),
                    functions.len()
                ),
                json!({"template": template.as_str(), "specChunks": chunks}),
            )],
        },
        Step {
            node: "provision_environment",
            focus: None,
            update: Some(SessionUpdate {
                environment: Some(environment.clone()),
                ..SessionUpdate::default()
            }),
            events: vec![event(
                "environment_created",
                format!(
                    "Environment {env_ref} created ({})",
                    options.environment_mode.as_str()
                ),
                environment,
            )],
        },
        Step {
            node: "apply_migrations",
            focus: None,
            update: None,
            events: vec![event(
                "migration_started",
                format!("Applying migrations for {} tables", bp.tables.len()),
                json!({"tables": bp.tables}),
            )],
        },
    ];
    for table in bp.tables {
        steps.push(Step {
            node: "apply_migrations",
            focus: Some(focus("table", table)),
            update: None,
            events: vec![event(
                "table_created",
                format!("Table public.{table} created"),
                json!({"schema": "public", "table": table}),
            )],
        });
    }
    steps.push(Step {
        node: "configure_rls",
        focus: None,
        update: None,
        events: vec![event(
            "rls_enabled",
            format!("Row level security enabled on {} tables", bp.tables.len()),
            json!({"tables": bp.tables}),
        )],
    });
    for (table, name, command) in bp.policies {
        steps.push(Step {
            node: "configure_rls",
            focus: Some(focus("policy", name)),
            update: None,
            events: vec![event(
                "policy_created",
                format!("Policy {name} created on public.{table} ({command})"),
                json!({"table": table, "policy": name, "command": command}),
            )],
        });
    }
    for name in &functions {
        steps.push(Step {
            node: "deploy_edge_functions",
            focus: Some(focus("function", name)),
            update: None,
            events: vec![event(
                "edge_function_deployed",
                format!("Edge function {name} deployed"),
                json!({"function": name, "path": format!("/functions/v1/{name}")}),
            )],
        });
    }
    if options.enable_analytics {
        steps.push(Step {
            node: "configure_analytics",
            focus: Some(focus("analytics", ANALYTICS_VIEW)),
            update: None,
            events: vec![event(
                "analytics_configured",
                "Analytics wrapper configured".to_owned(),
                json!({"function": ANALYTICS_VIEW, "provenance": "wrapper"}),
            )],
        });
    }
    let outputs = json!({
        "tables": bp.tables,
        "policies": bp.policies.len(),
        "functions": functions,
        "analytics": options.enable_analytics,
        "driftSentinel": if options.enable_drift_sentinel {
            json!({"enabled": true, "function": "drift_check"})
        } else {
            json!({"enabled": false})
        },
        "previewUrl": format!("https://{env_ref}.simulated.invalid"),
        "simulated": true,
    });
    steps.push(Step {
        node: "finalize",
        focus: None,
        update: Some(SessionUpdate {
            status: Some(SessionStatus::Succeeded),
            outputs: Some(outputs.clone()),
            ..SessionUpdate::default()
        }),
        events: vec![event(
            "build_succeeded",
            "Build succeeded".to_owned(),
            outputs,
        )],
    });
    steps
}

fn event(kind: &'static str, message: String, payload: Value) -> Event {
    Event {
        kind,
        message,
        payload,
    }
}

fn focus(kind: &'static str, name: &str) -> Focus {
    Focus {
        kind,
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn session(template: &str, options: Value) -> BuildSession {
        let now = chrono::Utc::now();
        BuildSession {
            id: Uuid::new_v4(),
            status: SessionStatus::Queued,
            template: template.into(),
            vibe_text: "a marketplace for synths".into(),
            options,
            plan: None,
            environment: None,
            outputs: None,
            error: None,
            created_by: None,
            created_at: now,
            updated_at: now,
            share_token: "t".into(),
        }
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .flat_map(|s| s.events.iter().map(|e| e.kind))
            .collect()
    }

    #[test]
    fn marketplace_without_analytics() {
        let steps = script(&session("marketplace", json!({})));
        let k = kinds(&steps);
        let mut expected = vec!["plan_created", "environment_created", "migration_started"];
        expected.extend(["table_created"; 4]);
        expected.push("rls_enabled");
        expected.extend(["policy_created"; 8]);
        expected.extend(["edge_function_deployed", "build_succeeded"]);
        assert_eq!(k, expected);
        assert!(!steps.iter().any(|s| s.node == "configure_analytics"));
        let last = steps.last().unwrap();
        assert_eq!(last.node, "finalize");
        assert_eq!(
            last.update.as_ref().unwrap().status,
            Some(SessionStatus::Succeeded)
        );
    }

    #[test]
    fn saas_with_analytics_deploys_more() {
        let steps = script(&session(
            "saas",
            json!({"enableAnalytics": true, "environmentMode": "project"}),
        ));
        let k = kinds(&steps);
        assert_eq!(k.iter().filter(|k| **k == "table_created").count(), 5);
        assert_eq!(
            k.iter().filter(|k| **k == "edge_function_deployed").count(),
            2
        );
        let n = k.len();
        assert_eq!(&k[n - 2..], ["analytics_configured", "build_succeeded"]);
        let env = steps[2]
            .update
            .as_ref()
            .unwrap()
            .environment
            .as_ref()
            .unwrap();
        assert_eq!(env["mode"], "project");
    }

    #[test]
    fn rows_are_written_before_their_events_and_focus_types_are_the_seeds() {
        for step in script(&session("marketplace", json!({"enableAnalytics": true}))) {
            if let Some(f) = &step.focus {
                assert!(
                    ["table", "policy", "function", "analytics"].contains(&f.kind),
                    "{f:?}"
                );
            }
            if step.node == "generate_plan" {
                assert!(step.update.as_ref().unwrap().plan.is_some());
                assert_eq!(step.events[0].kind, "plan_created");
            }
        }
    }
}
