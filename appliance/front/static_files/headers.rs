//! Parsers for the request headers `static_files` evaluates: `Range`,
//! entity-tag lists (`If-None-Match`, `If-Range`) and `Accept-Encoding`.
//! Pure string work, no I/O. Every parser is total: malformed input means
//! "ignore the header" (RFC 9110 lets a server ignore what it cannot parse),
//! never a panic.

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// No usable range: send the whole file (also for several ranges, which
    /// we do not answer with multipart/byteranges, and for malformed ones).
    Whole,
    /// One satisfiable range.
    Part { start: u64, len: u64 },
    /// Well-formed but outside the file: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n`.
pub(super) fn parse_range(value: &str, size: u64) -> ByteRange {
    let Some((unit, set)) = value.split_once('=') else {
        return ByteRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return ByteRange::Whole;
    }
    let set = set.trim();
    if set.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = set.split_once('-') else {
        return ByteRange::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix: the last n bytes.
        let Some(n) = parse_digits(last) else {
            return ByteRange::Whole;
        };
        if n == 0 || size == 0 {
            return ByteRange::Unsatisfiable;
        }
        let len = n.min(size);
        return ByteRange::Part {
            start: size - len,
            len,
        };
    }
    let Some(start) = parse_digits(first) else {
        return ByteRange::Whole;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_digits(last) {
            Some(end) if end >= start => Some(end),
            // Unparsable or last < first: an invalid range-spec, ignored.
            _ => return ByteRange::Whole,
        }
    };
    if start >= size {
        return ByteRange::Unsatisfiable;
    }
    let end = end.map_or(size - 1, |e| e.min(size - 1));
    ByteRange::Part {
        start,
        len: end - start + 1,
    }
}

/// Decimal digits only (`str::parse` would also take a `+`), no overflow.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `If-None-Match`: `*`, or a list of entity-tags compared weakly (the `W/`
/// prefix is ignored on both sides). `etag` is ours, quoted.
pub(super) fn none_match(header: &str, etag: &str) -> bool {
    if header.trim() == "*" {
        return true;
    }
    let ours = opaque(etag);
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        rest = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(quoted) = rest.strip_prefix('"') else {
            return false;
        };
        let Some(end) = quoted.find('"') else {
            return false;
        };
        if quoted[..end] == *ours {
            return true;
        }
        rest = &quoted[end + 1..];
    }
}

/// `If-Range` with an entity-tag: strong comparison, so a weak tag never
/// matches (RFC 9110 13.1.5).
pub(super) fn strong_match(tag: &str, etag: &str) -> bool {
    let tag = tag.trim();
    tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"') && opaque(tag) == opaque(etag)
}

fn opaque(etag: &str) -> &str {
    etag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(etag)
}

/// A content-coding we may have a precompressed sibling for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    Br,
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` value.
    pub(super) fn name(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The sibling file's suffix, also appended to its ETag.
    pub(super) fn suffix(self) -> &'static str {
        match self {
            Coding::Br => ".br",
            Coding::Gzip => ".gz",
        }
    }
}

/// The codings the client accepts, most preferred first: higher q wins, br
/// wins a tie (smaller files). `q=0` (or an unreadable q) means "not this".
/// A coding the client does not name is accepted through `*` only.
pub(super) fn accepted_codings(header: Option<&str>) -> Vec<Coding> {
    let Some(header) = header else {
        return Vec::new();
    };
    let (mut br, mut gzip, mut star) = (None, None, None);
    for item in header.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1000), |(_, v)| parse_qvalue(v.trim()))
            .unwrap_or(0);
        if name.eq_ignore_ascii_case("br") {
            br = Some(q);
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if name == "*" {
            star = Some(q);
        }
    }
    let br = br.or(star).unwrap_or(0);
    let gzip = gzip.or(star).unwrap_or(0);
    let mut out = Vec::with_capacity(2);
    match (br, gzip) {
        (0, 0) => {}
        (b, g) if b >= g => {
            out.push(Coding::Br);
            if g > 0 {
                out.push(Coding::Gzip);
            }
        }
        (b, _) => {
            out.push(Coding::Gzip);
            if b > 0 {
                out.push(Coding::Br);
            }
        }
    }
    out
}

/// An RFC 9110 qvalue in thousandths: `0`, `0.5`, `1`, `1.000`.
fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_every_form_are_parsed_and_clamped() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            ByteRange::Part { start: 0, len: 10 }
        );
        assert_eq!(
            parse_range("bytes=10-", 100),
            ByteRange::Part { start: 10, len: 90 }
        );
        assert_eq!(
            parse_range("bytes=-5", 100),
            ByteRange::Part { start: 95, len: 5 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            ByteRange::Part { start: 0, len: 100 }
        );
        assert_eq!(
            parse_range("Bytes = 90-200", 100),
            ByteRange::Part { start: 90, len: 10 }
        );
    }

    #[test]
    fn unsatisfiable_ranges_are_told_apart_from_malformed_ones() {
        assert_eq!(parse_range("bytes=100-", 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), ByteRange::Unsatisfiable);
        for bad in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=+1-2",
            "items=0-1",
            "bytes=0-1,4-5",
            "bytes",
            "bytes=-",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(parse_range(bad, 100), ByteRange::Whole, "{bad}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly_over_lists_and_star() {
        let ours = "\"5f-1000\"";
        assert!(none_match("\"5f-1000\"", ours));
        assert!(none_match("W/\"5f-1000\"", ours));
        assert!(none_match("\"x\", W/\"a,b\" ,\"5f-1000\"", ours));
        assert!(none_match("*", ours));
        assert!(!none_match("\"5f-1001\"", ours));
        assert!(!none_match("5f-1000", ours));
        assert!(!none_match("\"unterminated", ours));
    }

    #[test]
    fn if_range_needs_a_strong_equal_tag() {
        assert!(strong_match(" \"5f-1000\" ", "\"5f-1000\""));
        assert!(!strong_match("W/\"5f-1000\"", "\"5f-1000\""));
        assert!(!strong_match("\"", "\"\""));
    }

    #[test]
    fn accept_encoding_orders_by_q_and_honours_q_zero_and_star() {
        use Coding::*;
        assert_eq!(accepted_codings(None), vec![]);
        assert_eq!(accepted_codings(Some("gzip, deflate, br")), vec![Br, Gzip]);
        assert_eq!(accepted_codings(Some("br;q=0.5, gzip")), vec![Gzip, Br]);
        assert_eq!(accepted_codings(Some("br;q=0, gzip;q=0.8")), vec![Gzip]);
        assert_eq!(accepted_codings(Some("gzip;q=0.000")), vec![]);
        assert_eq!(accepted_codings(Some("*")), vec![Br, Gzip]);
        assert_eq!(accepted_codings(Some("*;q=0.1, br;q=0")), vec![Gzip]);
        assert_eq!(accepted_codings(Some("X-GZIP; Q=1.0")), vec![Gzip]);
        assert_eq!(accepted_codings(Some("gzip;q=2, br;q=0.1234")), vec![]);
        assert_eq!(accepted_codings(Some("identity")), vec![]);
    }
}
