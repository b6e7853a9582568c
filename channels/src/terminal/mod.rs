//! Terminal channels (`terminal:<id>`, DESIGN §3, issue 6): a browser terminal relayed to a PTY
//! host: the scrollback window with its byte-offset cursor, the driver policy, the JSON control
//! messages, and the node's registry of terminals. The transport lives in `hub`.

/// The topic kind of terminals.
pub const KIND: &str = "terminal";

pub mod control;
pub mod registry;
pub mod scrollback;
pub mod wire;

pub use control::{Ask, Control, Decision};
pub use registry::{AttachError, Job, Relay, TerminalConfig, Terminals, relay_topic};
pub use scrollback::{CatchUp, Scrollback};
pub use wire::{ClientMsg, ServerMsg};
