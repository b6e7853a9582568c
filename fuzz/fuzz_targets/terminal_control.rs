//! Terminal control messages from viewers: parsing never panics, and an accepted resize is
//! within bounds.
#![no_main]

use channels::terminal::wire::{ClientMsg, MAX_DIM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientMsg::Resize { cols, rows }) = ClientMsg::parse(s) {
        assert!((1..=MAX_DIM).contains(&cols) && (1..=MAX_DIM).contains(&rows));
    }
});
