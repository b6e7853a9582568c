//! RFC 6455 frames from clients, reassembled into messages: never a panic, and never a message
//! above the size bound.
#![no_main]

use channels::ws_frame::{Assembler, Message, Role, parse_frame};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut asm = Assembler::default();
    let mut pos = 0;
    while pos < buf.len() {
        let Ok(Some((frame, used))) = parse_frame(&mut buf[pos..], Role::Server, MAX) else {
            break;
        };
        pos += used;
        match asm.push(frame, MAX) {
            Ok(Some(Message::Text(t))) => assert!(t.len() <= MAX),
            Ok(Some(Message::Binary(b))) => assert!(b.len() <= MAX),
            Ok(_) => {}
            Err(_) => break,
        }
    }
});
