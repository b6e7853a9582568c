//! `Last-Event-ID` / `?since=` cursors: parsing never panics, and a parsed cursor prints back to
//! a string that parses to the same cursor.
#![no_main]

use channels::Since;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Since::After(c)) = Since::parse(s) {
        let again = Since::parse(&c.to_string());
        assert_eq!(
            again,
            Ok(Since::After(c)),
            "cursor {s:?} does not round-trip"
        );
    }
});
