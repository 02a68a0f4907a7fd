//! name-addr / addr-spec values (From, To, Route, Record-Route, Contact):
//! `"Display" <uri>;params` or `uri;params` (RFC 3261 §20.10, §25.1).

use super::scan::{self, Params};

/// A malformed name-addr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAddr;

#[derive(Debug, Clone, Copy)]
pub struct NameAddr<'a> {
    /// The display name as written (quotes kept), if any.
    pub display: Option<&'a [u8]>,
    /// The URI bytes (without the angle brackets).
    pub uri: &'a [u8],
    /// True when the URI was enclosed in `<...>`.
    pub angle: bool,
    /// Header parameters after the URI (`;tag=...`), from the first `;`.
    params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    pub fn parse(v: &'a [u8]) -> Result<NameAddr<'a>, BadAddr> {
        let v = scan::trim(v);
        if v.is_empty() {
            return Err(BadAddr);
        }
        let (display, lt) = if v[0] == b'"' {
            let end = scan::skip_quoted(v, 0).ok_or(BadAddr)?;
            let lt = scan::skip_lws(v, end);
            if v.get(lt) != Some(&b'<') {
                return Err(BadAddr);
            }
            (Some(&v[..end]), Some(lt))
        } else {
            match memchr::memchr(b'<', v) {
                Some(lt) => {
                    let d = scan::trim(&v[..lt]);
                    // An unquoted display name is tokens separated by LWS
                    // (RFC 4475 §3.1.2.15: "Bell, Alexander" is invalid).
                    if !scan::is_display_name(d) {
                        return Err(BadAddr);
                    }
                    ((!d.is_empty()).then_some(d), Some(lt))
                }
                None => (None, None),
            }
        };
        let (uri, params, angle) = match lt {
            Some(lt) => {
                let gt = lt + memchr::memchr(b'>', &v[lt..]).ok_or(BadAddr)?;
                // Liberal: spaces inside the brackets are trimmed (§3.1.2.14).
                (scan::trim(&v[lt + 1..gt]), &v[gt + 1..], true)
            }
            None => {
                // addr-spec: parameters after the URI belong to the header.
                let end = memchr::memchr(b';', v).unwrap_or(v.len());
                (scan::trim(&v[..end]), &v[end..], false)
            }
        };
        if uri.is_empty() || scan::has_non_uri_byte(uri) {
            return Err(BadAddr);
        }
        Params::new(params).validate().map_err(|_| BadAddr)?;
        Ok(NameAddr {
            display,
            uri,
            angle,
            params,
        })
    }

    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }

    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params().get(b"tag").flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a = NameAddr::parse(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(a.uri, b"sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some(&b"98asjd8"[..]));
        let a =
            NameAddr::parse(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(a.uri, b"sip:vivekg@chair-dnrc.example.com");
        assert_eq!(a.tag(), Some(&b"1918181833n"[..]));
        assert!(!a.angle);
        let a = NameAddr::parse(b"Bob <sip:bob@b.example>").unwrap();
        assert_eq!(a.display, Some(&b"Bob"[..]));
        assert_eq!(a.tag(), None);
        let a = NameAddr::parse(b"\"Watson, Thomas\" < sip:t.watson@example.org >").unwrap();
        assert_eq!(a.uri, b"sip:t.watson@example.org");
    }

    #[test]
    fn rejects() {
        assert!(NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>").is_err());
        assert!(NameAddr::parse(b"<sip:a@b").is_err());
        assert!(NameAddr::parse(b"<sip:a@b>;;").is_err());
        assert!(NameAddr::parse(b"").is_err());
    }
}
