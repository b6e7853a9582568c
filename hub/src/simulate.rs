//! The simulated orchestrator: plays seed 004 §6's node sequence for a new session, so the whole
//! path (REST, store, `build:<id>` broadcasts, architect presence) works without a real
//! LangGraph runner. Enabled by `--simulate-builds` (default on); a deployment with a real
//! orchestrator turns it off and lets that orchestrator write the same tables.
//!
//! Everything goes through [`SessionStore`], the path an external orchestrator takes: with
//! `DATABASE_URL` these are SQL writes to `build_sessions`/`build_events` whose triggers publish
//! on `build:<id>`; in memory, the memory store publishes. Between steps the architect's presence
//! on `build:<id>` moves (`Registry::track_detached`, seed 004 §5.1); it leaves at the end.
//!
//! Bounds: at most `--simulate-max-builds` builds run at once (a [`Semaphore`] permit is taken
//! before the session is created and moved into the task), every store call has a timeout, and
//! the task runs on the hub's `TaskTracker` and stops at shutdown (marking the build failed).

mod script;

pub use script::{Event, Focus, Step, script};

use std::sync::Arc;
use std::time::Duration;

use channels::TopicKey;
use channels::presence::{MemberId, PresencePayload};
use channels::sessions::{
    BuildSession, NewEvent, SessionStatus, SessionStore, SessionUpdate, StoreError, build_topic,
};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::state::AppState;

/// Longest a single store call may take before the build is failed.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The presence key of the architect on `build:<id>`.
pub const ARCHITECT_KEY: &str = "architect";

/// Starts simulated builds, at most `max_builds` at once.
#[derive(Debug, Clone)]
pub struct Simulator {
    slots: Arc<Semaphore>,
    max_builds: usize,
    step_delay: Duration,
}

impl Simulator {
    /// A simulator running at most `max_builds` (at least one) builds, pausing `step_delay`
    /// between steps.
    pub fn new(max_builds: usize, step_delay: Duration) -> Self {
        let max_builds = max_builds.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_builds)),
            max_builds,
            step_delay,
        }
    }

    /// A slot for one build, or `None` when `max_builds` are running.
    pub fn reserve(&self) -> Option<BuildSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(BuildSlot {
            permit,
            step_delay: self.step_delay,
        })
    }

    /// Builds running now.
    pub fn running(&self) -> usize {
        self.max_builds - self.slots.available_permits()
    }
}

/// A reserved build slot; dropping it without starting frees the slot.
#[derive(Debug)]
pub struct BuildSlot {
    permit: OwnedSemaphorePermit,
    step_delay: Duration,
}

impl BuildSlot {
    /// Runs `session`'s simulated build in the background on the hub's task tracker.
    pub fn start(self, state: &AppState, session: BuildSession) {
        let run = Run {
            topic: build_topic(session.id),
            member: state.node.next_conn_id(),
            id: session.id,
            state: state.clone(),
            step_delay: self.step_delay,
        };
        let permit = self.permit;
        state.tasks.spawn(async move {
            run.run(session).await;
            drop(permit);
        });
    }
}

/// Why a build stopped early.
#[derive(Debug)]
enum Stop {
    /// The hub is shutting down.
    Shutdown,
    /// The session was deleted meanwhile.
    Gone,
    /// A store call failed or timed out (the detail, for the log).
    Store(String),
}

/// One build in progress.
struct Run {
    state: AppState,
    id: Uuid,
    topic: TopicKey,
    /// The architect's presence member id, from the connection id space so it never collides.
    member: MemberId,
    step_delay: Duration,
}

impl Run {
    async fn run(self, session: BuildSession) {
        let steps = script(&session);
        let outcome = self.steps(&steps).await;
        self.state
            .node
            .registry
            .untrack_detached(&self.topic, self.member);
        // Other nodes see the architect through the broker (Redis), like any member.
        let broker = &self.state.node.broker;
        if let Err(e) = broker.presence_untrack(&self.topic, self.member).await {
            tracing::warn!(session = %self.id, error = %e, "sharing the architect's leave failed");
        }
        match outcome {
            Ok(()) => tracing::info!(session = %self.id, "simulated build succeeded"),
            Err(Stop::Gone) => {
                tracing::info!(session = %self.id, "session deleted during its simulated build")
            }
            Err(Stop::Shutdown) => {
                tracing::info!(session = %self.id, "simulated build interrupted by shutdown");
                self.fail("The build was interrupted because the hub shut down")
                    .await;
            }
            Err(Stop::Store(detail)) => {
                tracing::warn!(session = %self.id, error = %detail, "simulated build failed");
                self.fail("The build failed: the session store was unavailable")
                    .await;
            }
        }
    }

    async fn steps(&self, steps: &[Step]) -> Result<(), Stop> {
        let store = &self.state.sessions;
        self.call(store.update(
            self.id,
            SessionUpdate {
                status: Some(SessionStatus::Running),
                ..SessionUpdate::default()
            },
        ))
        .await?;
        let total = steps.len().max(1) as f64;
        for (i, step) in steps.iter().enumerate() {
            self.track(step, i as f64 / total).await;
            self.pause().await?;
            if let Some(update) = &step.update {
                self.call(store.update(self.id, update.clone())).await?;
            }
            for e in &step.events {
                self.call(store.append_event(NewEvent {
                    session_id: self.id,
                    kind: e.kind.to_owned(),
                    message: e.message.clone(),
                    payload: e.payload.clone(),
                }))
                .await?;
            }
        }
        Ok(())
    }

    /// Moves the architect's presence to `step`, here and (through the broker) on other nodes.
    async fn track(&self, step: &Step, progress: f64) {
        let meta = presence(step, progress);
        self.state.node.registry.track_detached(
            &self.topic,
            self.member,
            ARCHITECT_KEY,
            meta.clone(),
        );
        let broker = &self.state.node.broker;
        if let Err(e) = broker
            .presence_track(&self.topic, self.member, ARCHITECT_KEY, &meta)
            .await
        {
            tracing::warn!(session = %self.id, error = %e, "sharing the architect's presence failed");
        }
    }

    async fn pause(&self) -> Result<(), Stop> {
        tokio::select! {
            _ = self.state.shutdown.cancelled() => Err(Stop::Shutdown),
            _ = tokio::time::sleep(self.step_delay) => Ok(()),
        }
    }

    async fn call<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, Stop> {
        match tokio::time::timeout(STORE_CALL_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(StoreError::NotFound)) => Err(Stop::Gone),
            Ok(Err(StoreError::Unavailable(e))) => Err(Stop::Store(e)),
            Err(_) => Err(Stop::Store(format!(
                "store call timed out after {STORE_CALL_TIMEOUT:?}"
            ))),
        }
    }

    /// Marks the build failed and appends `build_failed`, as far as the store still allows.
    async fn fail(&self, reason: &str) {
        let store: &dyn SessionStore = self.state.sessions.as_ref();
        let update = SessionUpdate {
            status: Some(SessionStatus::Failed),
            error: Some(reason.to_owned()),
            ..SessionUpdate::default()
        };
        let event = NewEvent {
            session_id: self.id,
            kind: "build_failed".to_owned(),
            message: reason.to_owned(),
            payload: json!({ "error": reason }),
        };
        let res = match self.call(store.update(self.id, update)).await {
            Ok(_) => self.call(store.append_event(event)).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::warn!(session = %self.id, error = ?e, "could not record the build failure");
        }
    }
}

/// The architect's presence payload (seed 004 §5.1).
pub fn presence(step: &Step, progress: f64) -> PresencePayload {
    let focus = step
        .focus
        .as_ref()
        .map_or(Value::Null, |f| json!({ "type": f.kind, "name": f.name }));
    let mut p = PresencePayload::new();
    p.insert("actor".into(), json!("architect"));
    p.insert("step".into(), json!(step.node));
    p.insert("focus".into(), focus);
    // Two decimals are plenty for a progress bar and keep the payload readable.
    p.insert(
        "progress".into(),
        json!((progress.clamp(0.0, 1.0) * 100.0).round() / 100.0),
    );
    p
}
