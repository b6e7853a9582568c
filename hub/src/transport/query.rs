//! URL decoding shared by the transports: percent-decoding of paths and query strings, and
//! query parameters. One implementation, so a WebSocket, an event stream and a terminal read
//! the same `access_token=…` the same way.

use std::borrow::Cow;

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space` (query strings; in a path a
/// `+` is a plus sign). Malformed escapes are kept as they are.
fn decode_bytes(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match b.get(i + 1..i + 3) {
                Some(&[h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                    out.push(hex(h) * 16 + hex(l));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// [`decode_bytes`] as text; `None` when the result is not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
    String::from_utf8(decode_bytes(s, plus_is_space)).ok()
}

/// A query parameter's decoded value (invalid UTF-8 replaced, as a lenient client library
/// would); `None` when absent. Borrows when nothing needs decoding.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            if v.contains(['%', '+']) {
                Cow::Owned(String::from_utf8_lossy(&decode_bytes(v, true)).into_owned())
            } else {
                Cow::Borrowed(v)
            }
        })
    })
}

/// Every pair of a query string, decoded; pairs that are not UTF-8 are dropped.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_and_decoded() {
        let q = "apikey=a%2Bb&foo=bar&vsn=2.0.0&empty";
        assert_eq!(query_param(q, "apikey").as_deref(), Some("a+b"));
        assert_eq!(query_param(q, "vsn").as_deref(), Some("2.0.0"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("x=%zz%4", "x").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("x=a+b", "x").as_deref(), Some("a b"));
    }

    #[test]
    fn paths_keep_plus_and_reject_invalid_utf8() {
        assert_eq!(
            percent_decode("room:x+y", false).as_deref(),
            Some("room:x+y")
        );
        assert_eq!(
            percent_decode("room:x+y", true).as_deref(),
            Some("room:x y")
        );
        assert_eq!(percent_decode("a%3Ab", false).as_deref(), Some("a:b"));
        assert_eq!(percent_decode("%ff", false), None);
        assert_eq!(
            parse_query("a=1&b=%ff&c"),
            [
                ("a".to_owned(), "1".to_owned()),
                ("c".to_owned(), String::new())
            ]
        );
    }
}
