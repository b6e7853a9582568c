//! A whole simulated build through the API: events in order, the session finished, the
//! architect's presence moving on `build:<id>` and leaving; the bounds (429, shutdown, deletion).

use bytes::Bytes;
use channels::registry::Member;
use channels::sessions::build_topic;
use channels::{Format, OutFrame, Outbox, OutboxLimits};

use super::*;

/// Presence metas of the architect in the V2 frames a viewer received, in order, and whether it
/// left at the end.
fn architect_presence(frames: &[OutFrame]) -> (Vec<Value>, bool) {
    let mut metas = Vec::new();
    let mut left = false;
    for f in frames {
        let OutFrame::Text(b) = f else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(b) else {
            continue;
        };
        let joined = match v[3].as_str() {
            Some("presence_state") => &v[4]["architect"]["metas"][0],
            Some("presence_diff") => {
                if v[4]["leaves"]["architect"].is_object() {
                    left = true;
                }
                &v[4]["joins"]["architect"]["metas"][0]
            }
            _ => continue,
        };
        if joined.is_object() {
            metas.push(joined.clone());
        }
    }
    (metas, left)
}

#[tokio::test]
async fn a_simulated_build_runs_to_succeeded_with_its_events_in_order() {
    let st = state();
    let app = router(st.clone());
    let owner = user(Uuid::new_v4());
    let body = json!({
        "vibeText": "a marketplace for vintage synths",
        "template": "marketplace",
        "options": {"enableAnalytics": true, "environmentMode": "project"},
    });
    let (id, _) = create(&app, &owner, body).await;

    // A viewer on build:<id> with presence, as a joined connection would be.
    let topic = build_topic(id);
    let viewer = Member {
        conn: st.node.next_conn_id(),
        outbox: Outbox::new(OutboxLimits::default()),
        format: Format::V2,
        join_ref: None,
        broadcast_self: false,
        presence_enabled: true,
    };
    st.node.registry.join(
        &topic,
        viewer.clone(),
        OutFrame::Text(Bytes::from_static(b"[null,null,\"t\",\"phx_reply\",{}]")),
        false,
    );

    let events = wait_for_event(&app, id, &owner, "build_succeeded").await;
    let kinds: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let mut expected = vec!["plan_created", "environment_created", "migration_started"];
    expected.extend(["table_created"; 4]);
    expected.push("rls_enabled");
    expected.extend(["policy_created"; 8]);
    expected.extend(["edge_function_deployed"; 2]);
    expected.extend(["analytics_configured", "build_succeeded"]);
    assert_eq!(kinds, expected);
    let tables: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "table_created")
        .map(|e| e["payload"]["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["profiles", "listings", "bids", "orders"]);

    let r = send(&app, get(&format!("/sessions?id={id}"), Some(&owner))).await;
    let s = &r.body;
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(s["plan"]["template"], "marketplace");
    assert_eq!(s["environment"]["mode"], "project");
    assert_eq!(s["outputs"]["analytics"], true);
    assert!(s["error"].is_null());

    // The architect moved through the nodes with rising progress, then left.
    let mut frames = Vec::new();
    let wait_left = async {
        loop {
            viewer.outbox.drain(&mut frames);
            if architect_presence(&frames).1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, wait_left)
        .await
        .expect("the architect's presence left build:<id>");
    let (metas, _) = architect_presence(&frames);
    let steps: Vec<_> = metas.iter().map(|m| m["step"].as_str().unwrap()).collect();
    for node in [
        "generate_plan",
        "provision_environment",
        "apply_migrations",
        "configure_rls",
        "deploy_edge_functions",
        "configure_analytics",
        "finalize",
    ] {
        assert!(steps.contains(&node), "{node} missing from {steps:?}");
    }
    assert!(metas.iter().all(|m| m["actor"] == "architect"));
    assert!(
        metas
            .iter()
            .any(|m| m["focus"] == json!({"type": "table", "name": "bids"}))
    );
    assert!(metas.iter().any(|m| m["focus"]["type"] == "policy"));
    assert!(
        metas
            .iter()
            .any(|m| m["focus"] == json!({"type": "function", "name": "drift_check"}))
    );
    assert!(metas.iter().any(|m| m["focus"]["type"] == "analytics"));
    let progress: Vec<f64> = metas
        .iter()
        .map(|m| m["progress"].as_f64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(progress.iter().all(|p| (0.0..=1.0).contains(p)));

    // With the viewer gone nothing is left on the topic: the architect was untracked.
    st.node.registry.leave(&topic, viewer.conn);
    assert_eq!(st.node.registry.topic_count(), 0);
    assert_eq!(st.simulator.as_ref().unwrap().running(), 0);
}

#[tokio::test]
async fn builds_are_bounded_and_shutdown_fails_the_running_ones() {
    let st = state_with(|c| {
        c.simulate_max_builds = 1;
        c.simulate_step_delay = Duration::from_secs(60);
    });
    let app = router(st.clone());
    let owner = user(Uuid::new_v4());
    let (id, _) = create(&app, &owner, vibe("saas")).await;
    let r = send(
        &app,
        request("POST", "/sessions", Some(&owner), Some(vibe("saas"))),
    )
    .await;
    assert_error(&r, 429, "RATE_LIMITED");
    assert_eq!(r.headers["retry-after"], "5");

    st.shutdown.cancel();
    let events = wait_for_event(&app, id, &owner, "build_failed").await;
    assert_eq!(events.last().unwrap()["type"], "build_failed");
    let r = send(&app, get(&format!("/sessions?id={id}"), Some(&owner))).await;
    assert_eq!(r.body["status"], "failed");
    assert!(r.body["error"].as_str().unwrap().contains("shut down"));
    st.tasks.close();
    tokio::time::timeout(WAIT, st.tasks.wait())
        .await
        .expect("the simulation task ended");
    assert_eq!(st.simulator.as_ref().unwrap().running(), 0);
}

#[tokio::test]
async fn deleting_a_session_mid_build_stops_its_simulation() {
    let st = state_with(|c| c.simulate_step_delay = Duration::from_millis(20));
    let app = router(st.clone());
    let owner = user(Uuid::new_v4());
    let (id, _) = create(&app, &owner, vibe("marketplace")).await;
    wait_for_event(&app, id, &owner, "plan_created").await;
    assert!(st.sessions.delete(id).await.unwrap());
    st.tasks.close();
    tokio::time::timeout(WAIT, st.tasks.wait())
        .await
        .expect("the simulation noticed the deletion");
    assert_eq!(st.node.registry.topic_count(), 0);
}

#[tokio::test]
async fn without_simulation_sessions_stay_queued() {
    let st = state_with(|c| c.simulate_builds = false);
    assert!(st.simulator.is_none());
    let app = router(st.clone());
    let owner = user(Uuid::new_v4());
    let (id, _) = create(&app, &owner, vibe("saas")).await;
    st.tasks.close();
    st.tasks.wait().await;
    let r = send(&app, get(&format!("/sessions?id={id}"), Some(&owner))).await;
    assert_eq!(r.body["status"], "queued");
}
