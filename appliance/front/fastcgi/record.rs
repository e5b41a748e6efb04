//! FastCGI 1.0 record codec: the 8-byte record header, name-value pair
//! encoding for PARAMS, splitting streams into records, and incremental
//! decoding of what php-fpm sends back.
//!
//! Pure byte manipulation: it touches no socket. Everything decoded here comes
//! from php-fpm and is treated as untrusted: malformed input is an error, never
//! a panic.

use bytes::{Buf, Bytes, BytesMut};

/// The only protocol version there is.
const VERSION: u8 = 1;
/// Every record starts with this many header bytes.
pub(super) const HEADER_LEN: usize = 8;
/// A record's content length is a u16.
pub(super) const MAX_CONTENT: usize = 65535;
/// php-fpm serves one request per connection, so one id is enough; 0 is
/// reserved for management records.
pub(super) const REQUEST_ID: u16 = 1;

pub(super) const BEGIN_REQUEST: u8 = 1;
pub(super) const END_REQUEST: u8 = 3;
pub(super) const PARAMS: u8 = 4;
pub(super) const STDIN: u8 = 5;
pub(super) const STDOUT: u8 = 6;
pub(super) const STDERR: u8 = 7;

/// BEGIN_REQUEST role: the application answers an HTTP request.
const ROLE_RESPONDER: u16 = 1;
/// BEGIN_REQUEST flag: keep the connection open when the request ends.
const FCGI_KEEP_CONN: u8 = 1;
/// Name/value lengths above this cannot be encoded (31-bit length).
const MAX_PAIR_PART: usize = 0x7fff_ffff;

/// One decoded record (padding already dropped).
#[derive(Debug)]
pub(super) struct Record {
    pub kind: u8,
    pub request_id: u16,
    pub content: Bytes,
}

/// The body of an END_REQUEST record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndRequest {
    /// The script's exit status (php-fpm sends 0 in practice).
    pub app_status: u32,
    /// 0 = request complete, 1 = can't multiplex, 2 = overloaded, 3 = unknown role.
    pub protocol_status: u8,
}

impl EndRequest {
    /// Whether the application actually handled the request.
    pub fn completed(&self) -> bool {
        self.protocol_status == 0
    }

    /// Human-readable protocol status, for errors and logs.
    pub fn protocol_status_text(&self) -> &'static str {
        match self.protocol_status {
            0 => "request complete",
            1 => "cannot multiplex connections",
            2 => "overloaded",
            3 => "unknown role",
            _ => "unknown protocol status",
        }
    }
}

/// Padding that brings `len` to a multiple of 8, as the spec recommends.
fn padding_for(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Append one record. `content` must be at most [`MAX_CONTENT`] bytes; the
/// callers below guarantee it by chunking.
fn push_record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    let len = content.len().min(MAX_CONTENT);
    let pad = padding_for(len);
    let [len_hi, len_lo] = (len as u16).to_be_bytes();
    let [id_hi, id_lo] = REQUEST_ID.to_be_bytes();
    out.extend_from_slice(&[VERSION, kind, id_hi, id_lo, len_hi, len_lo, pad as u8, 0]);
    out.extend_from_slice(&content[..len]);
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// Append `data` as a stream of records of `kind`, split at [`MAX_CONTENT`].
/// Empty `data` appends nothing: an empty record would end the stream.
pub(super) fn push_stream(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    out.reserve(data.len() + (data.len() / MAX_CONTENT + 1) * (HEADER_LEN + 8));
    for piece in data.chunks(MAX_CONTENT) {
        push_record(out, kind, piece);
    }
}

/// Append the empty record that closes the stream of `kind`.
pub(super) fn push_end_of_stream(out: &mut Vec<u8>, kind: u8) {
    push_record(out, kind, &[]);
}

/// Append BEGIN_REQUEST: role RESPONDER; flags FCGI_KEEP_CONN when `keep`
/// (php-fpm then leaves the connection open at the request's end, its child
/// waiting on it for the next request), else 0 (php-fpm closes it).
pub(super) fn push_begin_request(out: &mut Vec<u8>, keep: bool) {
    let [role_hi, role_lo] = ROLE_RESPONDER.to_be_bytes();
    let flags = if keep { FCGI_KEEP_CONN } else { 0 };
    push_record(
        out,
        BEGIN_REQUEST,
        &[role_hi, role_lo, flags, 0, 0, 0, 0, 0],
    );
}

/// A name or value too long for the 31-bit length encoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooLong(pub String);

/// Lengths below 128 take one byte; longer ones four, with the top bit set.
fn push_length(out: &mut Vec<u8>, len: usize) -> Result<(), ()> {
    if len < 0x80 {
        out.push(len as u8);
        Ok(())
    } else if len <= MAX_PAIR_PART {
        out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        Ok(())
    } else {
        Err(())
    }
}

/// Append one name-value pair whose value is the concatenation of `value`'s
/// parts (a joined header, without building the joined string first).
pub(crate) fn push_pair(out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]) -> Result<(), TooLong> {
    let len: usize = value.iter().map(|p| p.len()).sum();
    push_length(out, name.len())
        .and_then(|()| push_length(out, len))
        .map_err(|()| TooLong(String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned()))?;
    out.extend_from_slice(name);
    for part in value {
        out.extend_from_slice(part);
    }
    Ok(())
}

/// Encode name-value pairs as the PARAMS stream content (before splitting
/// into records; a pair may straddle two records, which the spec allows).
pub(super) fn encode_pairs(pairs: &[(String, Vec<u8>)]) -> Result<Vec<u8>, TooLong> {
    let size: usize = pairs.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
    let mut out = Vec::with_capacity(size);
    for (name, value) in pairs {
        push_length(&mut out, name.len())
            .and_then(|()| push_length(&mut out, value.len()))
            .map_err(|()| TooLong(name.chars().take(64).collect()))?;
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value);
    }
    Ok(out)
}

/// Take one complete record off the front of `buf`, or `None` when more bytes
/// are needed. A wrong version is an error: the stream cannot be resynchronised.
pub(super) fn decode(buf: &mut BytesMut) -> Result<Option<Record>, String> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(format!("record version {} (expected 1)", buf[0]));
    }
    let kind = buf[1];
    let request_id = u16::from_be_bytes([buf[2], buf[3]]);
    let content_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    let total = HEADER_LEN + content_len + usize::from(buf[6]);
    if buf.len() < total {
        return Ok(None);
    }
    let mut record = buf.split_to(total);
    record.advance(HEADER_LEN);
    record.truncate(content_len);
    Ok(Some(Record {
        kind,
        request_id,
        content: record.freeze(),
    }))
}

/// Parse END_REQUEST content (8 bytes; extra bytes are ignored).
pub(super) fn parse_end_request(content: &[u8]) -> Option<EndRequest> {
    match content {
        [a, b, c, d, status, ..] if content.len() >= 8 => Some(EndRequest {
            app_status: u32::from_be_bytes([*a, *b, *c, *d]),
            protocol_status: *status,
        }),
        _ => None,
    }
}

/// Decode a PARAMS stream back into pairs (the php-fpm side of
/// [`encode_pairs`]); for tests, so it may panic on bad input.
#[cfg(test)]
pub(super) fn decode_pairs(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn length(data: &mut &[u8]) -> usize {
        if data[0] & 0x80 == 0 {
            let l = data[0] as usize;
            *data = &data[1..];
            l
        } else {
            let l = u32::from_be_bytes([data[0] & 0x7f, data[1], data[2], data[3]]) as usize;
            *data = &data[4..];
            l
        }
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = length(&mut data);
        let v = length(&mut data);
        out.push((data[..n].to_vec(), data[n..n + v].to_vec()));
        data = &data[n + v..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode every record in `bytes`, asserting nothing is left over.
    fn decode_all(bytes: &[u8]) -> Vec<Record> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(r) = decode(&mut buf).unwrap() {
            out.push(r);
        }
        assert!(buf.is_empty(), "{} trailing bytes", buf.len());
        out
    }

    #[test]
    fn short_lengths_take_one_byte_and_long_ones_four_with_top_bit() {
        let pairs = vec![
            ("A".to_string(), vec![b'x'; 127]),
            ("B".repeat(128), vec![b'y'; 300]),
        ];
        let enc = encode_pairs(&pairs).unwrap();
        assert_eq!(&enc[..2], &[1, 127]);
        let second = 2 + 1 + 127;
        assert_eq!(&enc[second..second + 8], &[0x80, 0, 0, 128, 0x80, 0, 1, 44]);
        let back = decode_pairs(&enc);
        assert_eq!(back[0], (b"A".to_vec(), vec![b'x'; 127]));
        assert_eq!(back[1], (vec![b'B'; 128], vec![b'y'; 300]));
    }

    #[test]
    fn params_longer_than_one_record_split_into_records_that_reassemble() {
        let pairs = vec![
            ("HTTP_COOKIE".to_string(), vec![b'c'; 200_000]),
            ("SHORT".to_string(), b"v".to_vec()),
        ];
        let enc = encode_pairs(&pairs).unwrap();
        let mut out = Vec::new();
        push_stream(&mut out, PARAMS, &enc);
        push_end_of_stream(&mut out, PARAMS);
        let records = decode_all(&out);
        assert_eq!(records.len(), 5, "4 content records + the empty one");
        assert!(
            records
                .iter()
                .all(|r| r.kind == PARAMS && r.request_id == 1)
        );
        assert!(records.iter().all(|r| r.content.len() <= MAX_CONTENT));
        assert!(records.last().unwrap().content.is_empty());
        let joined: Vec<u8> = records.iter().flat_map(|r| r.content.to_vec()).collect();
        assert_eq!(decode_pairs(&joined)[0].1.len(), 200_000);
        assert_eq!(decode_pairs(&joined)[1].1, b"v");
    }

    #[test]
    fn records_are_padded_to_eight_bytes() {
        let mut out = Vec::new();
        push_stream(&mut out, STDIN, b"hello");
        assert_eq!(out.len(), 16);
        assert_eq!(out[6], 3, "padding length");
        push_begin_request(&mut out, false);
        assert_eq!(&out[16..24], &[1, BEGIN_REQUEST, 0, 1, 0, 8, 0, 0]);
        assert_eq!(
            &out[24..32],
            &[0, 1, 0, 0, 0, 0, 0, 0],
            "RESPONDER, no keep-conn"
        );
        push_begin_request(&mut out, true);
        assert_eq!(
            &out[40..48],
            &[0, 1, 1, 0, 0, 0, 0, 0],
            "RESPONDER, keep-conn"
        );
    }

    #[test]
    fn empty_stream_data_writes_no_record() {
        let mut out = Vec::new();
        push_stream(&mut out, STDIN, b"");
        assert!(out.is_empty());
    }

    #[test]
    fn decoder_waits_for_whole_records_and_drops_padding() {
        let mut bytes = vec![1, STDOUT, 0, 1, 0, 3, 5, 0];
        bytes.extend_from_slice(b"abc\0\0\0\0\0");
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            assert!(
                decode(&mut buf).unwrap().is_none(),
                "complete after {i} bytes?"
            );
            buf.extend_from_slice(&[*b]);
        }
        let r = decode(&mut buf).unwrap().unwrap();
        assert_eq!((r.kind, &r.content[..]), (STDOUT, &b"abc"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn decoder_rejects_an_unknown_version() {
        let mut buf = BytesMut::from(&[2u8, STDOUT, 0, 1, 0, 0, 0, 0][..]);
        assert!(decode(&mut buf).is_err());
    }

    #[test]
    fn end_request_needs_eight_bytes() {
        assert_eq!(parse_end_request(&[0, 0, 0, 7, 0, 0, 0]), None);
        let end = parse_end_request(&[0, 0, 1, 2, 2, 0, 0, 0]).unwrap();
        assert_eq!(end.app_status, 258);
        assert!(!end.completed());
        assert_eq!(end.protocol_status_text(), "overloaded");
    }
}
