//! RFC 6455 WebSocket framing, without I/O.
//!
//! The hub owns its WebSocket framing instead of going through a general-purpose library so that
//! an idle connection holds no read or write buffer at all (the transport reads into a per-thread
//! scratch buffer and only keeps a carry-over for partial frames), and so that many queued frames
//! can be written with one system call. Both roles are here because `loadtest` speaks the client
//! side with the same code: the server requires masked frames from clients and sends unmasked
//! ones; a client does the opposite.
//!
//! Only the parts of RFC 6455 a Phoenix-style server needs exist: no extensions (permessage-deflate
//! is declined simply by not echoing it during the handshake), no reserved bits.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (RFC 6455 §1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Computes `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Which end of the connection this codec runs on; it decides the masking rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts only masked frames, writes unmasked ones.
    Server,
    /// Accepts only unmasked frames, writes masked ones.
    Client,
}

/// Frame opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented text or binary message.
    Continuation,
    /// UTF-8 text data.
    Text,
    /// Binary data.
    Binary,
    /// Close handshake.
    Close,
    /// Ping; must be answered with a pong carrying the same payload.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0,
            Self::Text => 1,
            Self::Binary => 2,
            Self::Close => 8,
            Self::Ping => 9,
            Self::Pong => 10,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Why a byte stream is not a valid sequence of WebSocket frames. Each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV bits set although no extension was negotiated.
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// A control frame longer than 125 bytes or fragmented.
    #[error("invalid control frame")]
    BadControlFrame,
    /// A client frame without a mask, or a server frame with one.
    #[error("frame masking does not match the role")]
    Masking,
    /// The frame or the reassembled message exceeds the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or accumulated length.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// A continuation frame without a message in progress, or a new data frame while one is.
    #[error("unexpected continuation state")]
    Fragmentation,
    /// A text message that is not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame whose payload is one byte or carries an invalid code or reason.
    #[error("invalid close frame payload")]
    BadClosePayload,
}

impl FrameError {
    /// The close code to send when closing because of this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 1009,
            Self::InvalidUtf8 => 1007,
            _ => 1002,
        }
    }
}

/// One parsed frame, payload already unmasked in place.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Final fragment of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: Opcode,
    /// Unmasked payload bytes, borrowed from the input buffer.
    pub payload: &'a [u8],
}

/// Parses the first frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, otherwise the frame and the
/// number of bytes it used. The payload is unmasked in place, which is why `buf` is mutable.
/// `max_payload` bounds a single frame so a peer cannot make us buffer an announced 2^63 bytes.
pub fn parse_frame(
    buf: &mut [u8],
    role: Role,
    max_payload: usize,
) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(FrameError::UnknownOpcode(b0 & 0x0f))?;
    let masked = b1 & 0x80 != 0;
    if masked != (role == Role::Server) {
        return Err(FrameError::Masking);
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (len > MAX_CONTROL_PAYLOAD as u64 || !fin) {
        return Err(FrameError::BadControlFrame);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let mut mask = [0u8; 4];
    if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        mask.copy_from_slice(&buf[pos..pos + 4]);
        pos += 4;
    }
    // `len <= max_payload`, so it fits in usize.
    let len = len as usize;
    if buf.len() < pos + len {
        return Ok(None);
    }
    let payload = &mut buf[pos..pos + len];
    if masked {
        apply_mask(payload, mask);
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        pos + len,
    )))
}

/// XORs `data` with the 4-byte mask (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Appends a frame header for a payload of `len` bytes. With `mask` (client role) the caller must
/// append the payload masked with the same key, see [`write_frame`].
pub fn write_header(out: &mut Vec<u8>, opcode: Opcode, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode.as_u8());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Appends one complete, unfragmented frame. `mask` is `Some` on the client side only.
pub fn write_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) {
    write_header(out, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
}

/// Appends a close frame with `code` and a reason truncated to fit a control frame.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let mut body = Vec::with_capacity(2 + reason.len().min(MAX_CONTROL_PAYLOAD - 2));
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2).as_bytes());
    write_frame(out, Opcode::Close, &body, mask);
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A whole message (after reassembling fragments) or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Text message, UTF-8 validated.
    Text(&'a [u8]),
    /// Binary message.
    Binary(&'a [u8]),
    /// Ping with its payload.
    Ping(&'a [u8]),
    /// Pong.
    Pong,
    /// Close with the peer's code (if any).
    Close(Option<u16>),
}

/// Reassembles fragmented messages. Unfragmented frames (the normal case) pass through borrowed;
/// only fragments are copied, into a buffer that is released once the message is complete.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Option<(Opcode, Vec<u8>)>,
    done: Vec<u8>,
}

impl Assembler {
    /// Feeds one frame. Returns a message when one is complete. `max_message` bounds the
    /// reassembled size.
    pub fn push<'a>(
        &'a mut self,
        frame: Frame<'a>,
        max_message: usize,
    ) -> Result<Option<Message<'a>>, FrameError> {
        match frame.opcode {
            Opcode::Ping => Ok(Some(Message::Ping(frame.payload))),
            Opcode::Pong => Ok(Some(Message::Pong)),
            Opcode::Close => Ok(Some(Message::Close(parse_close(frame.payload)?))),
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(FrameError::Fragmentation);
                }
                if frame.fin {
                    return finish(frame.opcode, frame.payload).map(Some);
                }
                self.partial = Some((frame.opcode, frame.payload.to_vec()));
                Ok(None)
            }
            Opcode::Continuation => {
                let Some((op, mut buf)) = self.partial.take() else {
                    return Err(FrameError::Fragmentation);
                };
                let total = buf.len() + frame.payload.len();
                if total > max_message {
                    return Err(FrameError::TooLarge {
                        len: total as u64,
                        max: max_message,
                    });
                }
                buf.extend_from_slice(frame.payload);
                if !frame.fin {
                    self.partial = Some((op, buf));
                    return Ok(None);
                }
                self.done = buf;
                finish(op, &self.done).map(Some)
            }
        }
    }

    /// Drops the buffer of the last reassembled message; call after handling it so an idle
    /// connection keeps no memory.
    pub fn release(&mut self) {
        self.done = Vec::new();
    }
}

fn finish(op: Opcode, payload: &[u8]) -> Result<Message<'_>, FrameError> {
    if op == Opcode::Text {
        std::str::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)?;
        Ok(Message::Text(payload))
    } else {
        Ok(Message::Binary(payload))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::BadClosePayload),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid || std::str::from_utf8(&payload[2..]).is_err() {
                return Err(FrameError::BadClosePayload);
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_text_frame_round_trips_for_every_length_class() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut wire = Vec::new();
            write_frame(&mut wire, Opcode::Text, &payload, Some(MASK));
            let (frame, used) = parse_frame(&mut wire, Role::Server, 1 << 20)
                .expect("valid")
                .expect("complete");
            assert_eq!(used, wire_len(len, true));
            assert!(frame.fin);
            assert_eq!(frame.opcode, Opcode::Text);
            assert_eq!(frame.payload, &payload[..], "len {len}");
        }
    }

    fn wire_len(len: usize, masked: bool) -> usize {
        let ext = if len < 126 {
            0
        } else if len <= 65535 {
            2
        } else {
            8
        };
        2 + ext + if masked { 4 } else { 0 } + len
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Opcode::Binary, &[1u8; 300], Some(MASK));
        for cut in 0..wire.len() {
            let mut part = wire[..cut].to_vec();
            assert!(
                parse_frame(&mut part, Role::Server, 1024)
                    .expect("no error on a prefix")
                    .is_none(),
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn server_rejects_unmasked_and_client_rejects_masked() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Opcode::Text, b"hi", None);
        assert_eq!(
            parse_frame(&mut wire.clone(), Role::Server, 10).unwrap_err(),
            FrameError::Masking
        );
        assert!(parse_frame(&mut wire, Role::Client, 10).unwrap().is_some());
        let mut masked = Vec::new();
        write_frame(&mut masked, Opcode::Text, b"hi", Some(MASK));
        assert_eq!(
            parse_frame(&mut masked, Role::Client, 10).unwrap_err(),
            FrameError::Masking
        );
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        // Only the header is present: the limit applies before any payload is buffered.
        let mut wire = vec![0x82, 0xff];
        wire.extend_from_slice(&(1u64 << 40).to_be_bytes());
        wire.extend_from_slice(&MASK);
        let err = parse_frame(&mut wire, Role::Server, 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn reserved_bits_unknown_opcodes_and_bad_control_frames_are_errors() {
        assert_eq!(
            parse_frame(&mut [0xc1, 0x80, 0, 0, 0, 0], Role::Server, 10).unwrap_err(),
            FrameError::ReservedBits
        );
        assert_eq!(
            parse_frame(&mut [0x83, 0x80, 0, 0, 0, 0], Role::Server, 10).unwrap_err(),
            FrameError::UnknownOpcode(3)
        );
        // A fragmented ping.
        assert_eq!(
            parse_frame(&mut [0x09, 0x80, 0, 0, 0, 0], Role::Server, 10).unwrap_err(),
            FrameError::BadControlFrame
        );
        // A 126-byte ping.
        let mut wire = Vec::new();
        write_header(&mut wire, Opcode::Ping, 126, Some(MASK));
        wire.extend_from_slice(&[0; 126]);
        assert_eq!(
            parse_frame(&mut wire, Role::Server, 1000).unwrap_err(),
            FrameError::BadControlFrame
        );
    }

    fn frames(wire: &mut [u8]) -> Vec<(bool, Opcode, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let (f, used) = parse_frame(&mut wire[pos..], Role::Client, 1 << 20)
                .unwrap()
                .unwrap();
            out.push((f.fin, f.opcode, f.payload.to_vec()));
            pos += used;
        }
        out
    }

    #[test]
    fn fragments_reassemble_with_interleaved_ping() {
        let mut wire = vec![0x01, 3, b'a', b'b', b'c']; // text, not fin
        wire.extend_from_slice(&[0x89, 1, b'p']); // ping in between
        wire.extend_from_slice(&[0x80, 2, b'd', b'e']); // continuation, fin
        let parsed = frames(&mut wire);
        let mut asm = Assembler::default();
        let mut got = Vec::new();
        for (fin, opcode, payload) in &parsed {
            let f = Frame {
                fin: *fin,
                opcode: *opcode,
                payload,
            };
            if let Some(m) = asm.push(f, 100).unwrap() {
                got.push(format!("{m:?}"));
            }
        }
        assert_eq!(
            got,
            vec![
                format!("{:?}", Message::Ping(b"p")),
                format!("{:?}", Message::Text(b"abcde"))
            ]
        );
    }

    #[test]
    fn reassembly_enforces_the_message_limit_and_ordering() {
        let mut asm = Assembler::default();
        let first = Frame {
            fin: false,
            opcode: Opcode::Binary,
            payload: &[0; 60],
        };
        assert!(asm.push(first, 100).unwrap().is_none());
        let more = Frame {
            fin: true,
            opcode: Opcode::Continuation,
            payload: &[0; 60],
        };
        assert!(matches!(
            asm.push(more, 100).unwrap_err(),
            FrameError::TooLarge { .. }
        ));
        let mut asm = Assembler::default();
        let orphan = Frame {
            fin: true,
            opcode: Opcode::Continuation,
            payload: b"x",
        };
        assert_eq!(
            asm.push(orphan, 100).unwrap_err(),
            FrameError::Fragmentation
        );
    }

    #[test]
    fn invalid_utf8_text_and_bad_close_payloads_are_errors() {
        let mut asm = Assembler::default();
        let bad = Frame {
            fin: true,
            opcode: Opcode::Text,
            payload: &[0xff, 0xfe],
        };
        let err = asm.push(bad, 100).unwrap_err();
        assert_eq!(err, FrameError::InvalidUtf8);
        assert_eq!(err.close_code(), 1007);
        for payload in [&[3u8][..], &[0x03, 0xe7][..], &[0x03, 0xe8, 0xff][..]] {
            let close = Frame {
                fin: true,
                opcode: Opcode::Close,
                payload,
            };
            assert_eq!(
                Assembler::default().push(close, 100).unwrap_err(),
                FrameError::BadClosePayload,
                "{payload:?}"
            );
        }
        let ok = Frame {
            fin: true,
            opcode: Opcode::Close,
            payload: &[0x03, 0xe8, b'o', b'k'],
        };
        assert_eq!(
            Assembler::default().push(ok, 100).unwrap(),
            Some(Message::Close(Some(1000)))
        );
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let mut wire = Vec::new();
        write_close(&mut wire, 1001, &reason, None);
        let (frame, _) = parse_frame(&mut wire, Role::Client, 1000).unwrap().unwrap();
        assert!(frame.payload.len() <= 125);
        assert!(std::str::from_utf8(&frame.payload[2..]).is_ok());
    }
}
