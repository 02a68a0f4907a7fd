//! Byte-level lexing shared by the typed parsers: linear whitespace (with
//! folded continuation lines), tokens, quoted strings, comma-separated
//! values and `;name=value` parameters. Nothing here allocates.

/// Byte classes, as bits of one table: these tests run on almost every
/// byte of a header section.
const TOKEN: u8 = 1;
/// Host name / IPv4 characters (plus `_`, seen in the wild).
const HOST: u8 = 2;
/// Unquoted parameter value characters: token plus `:` (bare IPv6
/// `received`, RFC 5118 §4.5) and `[` `]`.
const PVALUE: u8 = 4;
/// Never inside a URI: controls, space, `<`, `>`, `"`, DEL.
const NOT_URI: u8 = 8;
/// Allowed in an unquoted display name: token characters and LWS.
const DISPLAY: u8 = 16;

const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let token = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        let host = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        let pvalue = token || matches!(b, b':' | b'[' | b']');
        let not_uri = b <= b' ' || matches!(b, b'<' | b'>' | b'"' | 0x7f);
        let display = token || matches!(b, b' ' | b'\t' | b'\r' | b'\n');
        t[i] = ((token as u8) * TOKEN)
            | ((host as u8) * HOST)
            | ((pvalue as u8) * PVALUE)
            | ((not_uri as u8) * NOT_URI)
            | ((display as u8) * DISPLAY);
        i += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

#[inline(always)]
pub(crate) fn is_token(b: u8) -> bool {
    CLASS[b as usize] & TOKEN != 0
}

#[inline(always)]
pub(crate) fn is_host_char(b: u8) -> bool {
    CLASS[b as usize] & HOST != 0
}

/// True if `s` has a byte that can never be part of a URI.
#[inline]
pub(crate) fn has_non_uri_byte(s: &[u8]) -> bool {
    s.iter().any(|&b| CLASS[b as usize] & NOT_URI != 0)
}

/// True if `s` is a valid unquoted display name (tokens and LWS).
#[inline]
pub(crate) fn is_display_name(s: &[u8]) -> bool {
    s.iter().all(|&b| CLASS[b as usize] & DISPLAY != 0)
}

#[inline(always)]
fn is_pvalue(b: u8) -> bool {
    CLASS[b as usize] & PVALUE != 0
}

#[inline]
pub(crate) fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Skips LWS from `i`: spaces, tabs and line folds (CRLF or LF followed by
/// SP/HT). A line break not followed by whitespace is not LWS.
#[inline]
pub(crate) fn skip_lws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() {
        match s[i] {
            b' ' | b'\t' => i += 1,
            b'\r' if s.get(i + 1) == Some(&b'\n') && s.get(i + 2).is_some_and(|&b| is_wsp(b)) => {
                i += 3
            }
            b'\n' if s.get(i + 1).is_some_and(|&b| is_wsp(b)) => i += 2,
            _ => break,
        }
    }
    i
}

/// `s` without trailing LWS (spaces, tabs, CR, LF).
#[inline]
pub(crate) fn trim_end(s: &[u8]) -> &[u8] {
    let mut e = s.len();
    while e > 0 && matches!(s[e - 1], b' ' | b'\t' | b'\r' | b'\n') {
        e -= 1;
    }
    &s[..e]
}

/// `s` without leading and trailing LWS.
#[inline]
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    trim_end(&s[skip_lws(s, 0)..])
}

/// Length of the token run at the start of `s`.
#[inline]
pub(crate) fn token_len(s: &[u8]) -> usize {
    s.iter().position(|&b| !is_token(b)).unwrap_or(s.len())
}

/// True if `s` is a non-empty token.
#[inline]
pub(crate) fn is_token_str(s: &[u8]) -> bool {
    !s.is_empty() && token_len(s) == s.len()
}

/// Given `s[i] == b'"'`, the index just past the closing quote, honouring
/// backslash escapes; `None` if the string is unterminated.
#[inline]
pub(crate) fn skip_quoted(s: &[u8], i: usize) -> Option<usize> {
    debug_assert_eq!(s.get(i), Some(&b'"'));
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Offset of `sub` inside `base`. Both must come from the same buffer: the
/// typed parsers hand out subslices and the editor needs their positions.
#[inline]
pub(crate) fn offset_in(base: &[u8], sub: &[u8]) -> usize {
    let off = (sub.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    debug_assert!(off <= base.len() && off + sub.len() <= base.len());
    off
}

/// Splits a header value at the commas that separate values: commas inside
/// a quoted string or `<...>` do not split. Yields each value trimmed of
/// LWS, empty ones included (so a validator can refuse `a,,b`).
#[derive(Clone)]
pub struct CommaValues<'a> {
    s: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> CommaValues<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Self {
            s,
            pos: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for CommaValues<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let s = self.s;
        let start = self.pos;
        let mut i = start;
        // Jump to the next byte that matters instead of walking them all.
        while let Some(j) = memchr::memchr3(b',', b'"', b'<', &s[i..]) {
            i += j;
            match s[i] {
                b',' => {
                    self.pos = i + 1;
                    return Some(trim(&s[start..i]));
                }
                b'"' => match skip_quoted(s, i) {
                    Some(k) => i = k,
                    // Unterminated quote: the rest is one (invalid) value.
                    None => break,
                },
                _ => match memchr::memchr(b'>', &s[i..]) {
                    Some(k) => i += k + 1,
                    None => break,
                },
            }
        }
        self.done = true;
        Some(trim(&s[start..]))
    }
}

/// One `;name[=value]` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// Iterates `;name[=value]` parameters, tolerating LWS around `;` and `=`.
/// Values are tokens, quoted strings or IPv6 references; anything else
/// ends the iteration with an error.
#[derive(Clone)]
pub struct Params<'a> {
    s: &'a [u8],
    pos: usize,
    failed: bool,
}

/// A parameter list that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadParam;

impl<'a> Params<'a> {
    /// `s` starts at the first `;` (or is empty / whitespace only).
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Self {
            s,
            pos: 0,
            failed: false,
        }
    }

    /// The first parameter called `name` (case-insensitive): `Some(None)`
    /// when present without a value.
    pub fn get(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.clone()
            .filter_map(Result::ok)
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    /// Checks the whole list follows the grammar.
    pub fn validate(&self) -> Result<(), BadParam> {
        for p in self.clone() {
            p?;
        }
        Ok(())
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Result<Param<'a>, BadParam>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let s = self.s;
        let mut i = skip_lws(s, self.pos);
        if i >= s.len() {
            return None;
        }
        let fail = |this: &mut Self| {
            this.failed = true;
            Some(Err(BadParam))
        };
        if s[i] != b';' {
            return fail(self);
        }
        i = skip_lws(s, i + 1);
        let n = token_len(&s[i..]);
        if n == 0 {
            return fail(self);
        }
        let name = &s[i..i + n];
        i = skip_lws(s, i + n);
        let mut value = None;
        if s.get(i) == Some(&b'=') {
            i = skip_lws(s, i + 1);
            let v_start = i;
            match s.get(i) {
                Some(b'"') => match skip_quoted(s, i) {
                    Some(j) => i = j,
                    None => return fail(self),
                },
                // An IPv6 reference, maybe followed by more (a URI
                // parameter may hold `[::1]:5060`: `[`, `]` and `:` are
                // param-unreserved, RFC 3261 §25.1).
                Some(b'[') => match memchr::memchr(b']', &s[i..]) {
                    Some(j) => {
                        i += j + 1;
                        i += s[i..]
                            .iter()
                            .position(|&b| !is_pvalue(b))
                            .unwrap_or(s.len() - i);
                    }
                    None => return fail(self),
                },
                _ => {
                    i += s[i..]
                        .iter()
                        .position(|&b| !is_pvalue(b))
                        .unwrap_or(s.len() - i)
                }
            }
            if i == v_start {
                return fail(self);
            }
            value = Some(&s[v_start..i]);
        }
        self.pos = i;
        Some(Ok(Param { name, value }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lws_skips_folds_not_line_ends() {
        assert_eq!(skip_lws(b"  \r\n\tx", 0), 5);
        assert_eq!(skip_lws(b" \r\nx", 0), 1);
        assert_eq!(skip_lws(b"\n x", 0), 2);
    }

    #[test]
    fn comma_split_respects_quotes_and_angles() {
        let v: Vec<_> = CommaValues::new(b"\"a,b\" <sip:x;p=1,2>, <sip:y> ,c").collect();
        assert_eq!(
            v,
            vec![&b"\"a,b\" <sip:x;p=1,2>"[..], &b"<sip:y>"[..], &b"c"[..]]
        );
        let v: Vec<_> = CommaValues::new(b"a,,b").collect();
        assert_eq!(v, vec![&b"a"[..], &b""[..], &b"b"[..]]);
    }

    #[test]
    fn an_ipv6_reference_with_a_port_is_one_value() {
        let p = Params::new(b";lr;node=[::1]:5080;x=1");
        let v: Vec<_> = p.map(Result::unwrap).map(|p| (p.name, p.value)).collect();
        assert_eq!(
            v,
            vec![
                (&b"lr"[..], None),
                (&b"node"[..], Some(&b"[::1]:5080"[..])),
                (&b"x"[..], Some(&b"1"[..])),
            ]
        );
    }

    #[test]
    fn params_with_lws_and_quotes() {
        let p = Params::new(b" ;  tag = 1918 ; lr ;x=\"a;b\";received=[2001:db8::9]");
        let v: Vec<_> = p.clone().map(Result::unwrap).collect();
        assert_eq!(v.len(), 4);
        assert_eq!(p.get(b"TAG"), Some(Some(&b"1918"[..])));
        assert_eq!(p.get(b"lr"), Some(None));
        assert_eq!(p.get(b"x"), Some(Some(&b"\"a;b\""[..])));
        assert_eq!(p.get(b"received"), Some(Some(&b"[2001:db8::9]"[..])));
        assert!(Params::new(b";;").validate().is_err());
        assert!(Params::new(b";a=").validate().is_err());
        assert!(Params::new(b"junk").validate().is_err());
    }
}
