//! Terminal channels (`terminal:<id>`, DESIGN §3, issue 6): a browser terminal relayed to a PTY
//! host. Pure parts only: the scrollback window with its byte-offset cursor, the driver policy,
//! and the JSON control messages. The transport lives in `hub`.

pub mod control;
pub mod scrollback;
pub mod wire;

pub use control::{Ask, Control, Decision};
pub use scrollback::{CatchUp, Scrollback};
pub use wire::{ClientMsg, ServerMsg};
