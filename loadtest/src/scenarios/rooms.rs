//! `rooms`: `--rooms` topics with `--members` each and `--rate` messages per second in every
//! room, as a chat product's many small rooms are. It is a `fanout` run (one publisher going
//! round-robin over the rooms), reported under its own name with its shape as parameters.

use std::sync::Arc;

use super::{Ctx, fanout};
use crate::args::RoomsArgs;
use crate::report::Report;

/// Runs the scenario.
pub async fn run(args: &RoomsArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let f = args.fanout();
    let mut r = fanout::run(&f, ctx).await?;
    r.set_scenario("rooms");
    r.param("rooms", args.rooms);
    r.param("members", args.members);
    r.param("rate_per_room", args.rate);
    r.param("conns", f.spread.conns);
    r.param("topics", f.spread.topics);
    r.param("topic_prefix", f.spread.topic_prefix);
    Ok(r)
}
