//! Who drives a terminal: one driver at a time, whose input alone reaches the host.
//!
//! Policy (issue 6): when nobody drives, the first viewer *allowed to drive* (the terminal's
//! owner or the service role: the caller decides and passes `may_drive`) who sends input or
//! `take_control` becomes the driver. Another allowed viewer may `take_control` at any time (a
//! human takes the keyboard back from an agent, or the reverse); the driver may `release`, and a
//! driver that leaves releases. Everyone is told who drives after each change.
//!
//! Pure state: no I/O. `V` identifies a viewer (a connection, possibly on another node).

/// What a viewer asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Input bytes to forward to the host.
    Input,
    /// `{"type":"take_control"}`.
    TakeControl,
    /// `{"type":"release"}`.
    Release,
}

/// The answer to an [`Ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed. `changed`: the driver changed, so everyone must be told.
    Granted {
        /// Whether the driver changed.
        changed: bool,
    },
    /// Refused, with the reason to send back.
    Refused(&'static str),
}

/// Refusal: the viewer is not allowed to drive at all.
pub const NOT_ALLOWED: &str = "Forbidden: only the terminal's owner or the service role may type";
/// Refusal: someone else drives.
pub const NOT_DRIVER: &str =
    "Forbidden: another viewer is driving; send {\"type\":\"take_control\"} to take over";
/// Refusal: `release` from a viewer that does not drive.
pub const NOT_DRIVING: &str = "Invalid: you are not driving this terminal";

/// The terminal's driver.
#[derive(Debug, Clone)]
pub struct Control<V> {
    driver: Option<V>,
}

impl<V> Default for Control<V> {
    fn default() -> Self {
        Self { driver: None }
    }
}

impl<V: PartialEq + Clone> Control<V> {
    /// The current driver.
    pub fn driver(&self) -> Option<&V> {
        self.driver.as_ref()
    }

    /// Decides `ask` from `who`, who may (or may not) drive, and applies it.
    pub fn ask(&mut self, who: &V, may_drive: bool, ask: Ask) -> Decision {
        let drives = self.driver.as_ref() == Some(who);
        match ask {
            Ask::Input if drives => Decision::Granted { changed: false },
            Ask::Input if self.driver.is_some() => Decision::Refused(NOT_DRIVER),
            Ask::Input | Ask::TakeControl if !may_drive => Decision::Refused(NOT_ALLOWED),
            Ask::Input | Ask::TakeControl => {
                self.driver = Some(who.clone());
                Decision::Granted { changed: !drives }
            }
            Ask::Release if drives => {
                self.driver = None;
                Decision::Granted { changed: true }
            }
            Ask::Release => Decision::Refused(NOT_DRIVING),
        }
    }

    /// `who` left: a leaving driver releases. Returns whether the driver changed.
    pub fn left(&mut self, who: &V) -> bool {
        if self.driver.as_ref() == Some(who) {
            self.driver = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_allowed_typist_drives_and_others_are_refused() {
        let mut c = Control::default();
        assert_eq!(
            c.ask(&"guest", false, Ask::Input),
            Decision::Refused(NOT_ALLOWED)
        );
        assert_eq!(c.driver(), None);
        assert_eq!(
            c.ask(&"owner", true, Ask::Input),
            Decision::Granted { changed: true }
        );
        assert_eq!(
            c.ask(&"owner", true, Ask::Input),
            Decision::Granted { changed: false }
        );
        assert_eq!(
            c.ask(&"agent", true, Ask::Input),
            Decision::Refused(NOT_DRIVER)
        );
        assert_eq!(
            c.ask(&"guest", false, Ask::Input),
            Decision::Refused(NOT_DRIVER)
        );
        assert_eq!(c.driver(), Some(&"owner"));
    }

    #[test]
    fn handoff_take_control_and_release() {
        let mut c = Control::default();
        c.ask(&"owner", true, Ask::Input);
        assert_eq!(
            c.ask(&"agent", true, Ask::TakeControl),
            Decision::Granted { changed: true }
        );
        assert_eq!(c.driver(), Some(&"agent"));
        assert_eq!(
            c.ask(&"owner", true, Ask::Release),
            Decision::Refused(NOT_DRIVING)
        );
        assert_eq!(
            c.ask(&"guest", false, Ask::TakeControl),
            Decision::Refused(NOT_ALLOWED)
        );
        assert_eq!(
            c.ask(&"agent", true, Ask::Release),
            Decision::Granted { changed: true }
        );
        assert_eq!(c.driver(), None);
        assert_eq!(
            c.ask(&"agent", true, Ask::TakeControl),
            Decision::Granted { changed: true }
        );
        assert_eq!(
            c.ask(&"agent", true, Ask::TakeControl),
            Decision::Granted { changed: false }
        );
    }

    #[test]
    fn a_leaving_driver_releases() {
        let mut c = Control::default();
        c.ask(&1, true, Ask::TakeControl);
        assert!(!c.left(&2));
        assert!(c.left(&1));
        assert_eq!(c.driver(), None);
    }
}
