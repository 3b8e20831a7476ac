//! HPACK (RFC 7541): a decoder with the dynamic table and Huffman strings,
//! for what clients send; an encoder with a dynamic table of its own, for
//! the answers the proxy sends. The encoder indexes the fields that repeat
//! from one answer to the next (`content-type`, `server`, `date`, a task's
//! own constant headers), so a repeated field costs a byte or two; it
//! leaves out those that change with every answer (`content-length`,
//! `etag`, request ids), which would only push the others out, and never
//! indexes cookies or credentials (RFC 7541 §7.1.3). It writes plain
//! strings, no Huffman: less CPU for a few bytes of the first answer.
//!
//! Every block the encoder writes changes what the client's decoder holds:
//! each must reach the client, in the order written.

use std::collections::VecDeque;

/// Why a header block could not be decoded. Any of these ends the
/// connection (COMPRESSION_ERROR): the two ends' tables no longer agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Error {
    /// The block ends inside a field.
    Truncated,
    /// An integer larger than any length or index here can be.
    Overflow,
    /// An index past the end of the static and dynamic tables.
    Index(usize),
    /// A Huffman string that is not one: a bad code, EOS, or bad padding.
    Huffman,
    /// A table size update above the limit the proxy announced, or after
    /// the first field of a block.
    TableSize,
    /// A single string larger than the block limit allows.
    TooLong,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Truncated => f.write_str("header block ends inside a field"),
            Error::Overflow => f.write_str("integer overflow in header block"),
            Error::Index(i) => write!(f, "header index {i} is not in the table"),
            Error::Huffman => f.write_str("invalid Huffman-coded string"),
            Error::TableSize => f.write_str("invalid dynamic table size update"),
            Error::TooLong => f.write_str("header string too long"),
        }
    }
}

/// RFC 7541 Appendix A.
pub(crate) const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Each entry's size counts its strings and 32 more (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// HPACK's dynamic table size, as every peer starts with it.
pub(crate) const DEFAULT_TABLE: usize = 4096;

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A dynamic table (RFC 7541 §4), kept the same way by the client's
/// encoder and the proxy's decoder, and by the proxy's encoder and the
/// client's decoder.
struct Table {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    size: usize,
    /// The size last said in a size update.
    max: usize,
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max,
        }
    }

    /// Dynamic index `i` (62 and up).
    fn get(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i.wrapping_sub(62))
    }

    /// A dynamic table size update.
    fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict(0);
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.0.len() + entry.1.len() + ENTRY_OVERHEAD;
        if size > self.max {
            // Larger than the whole table: it empties the table.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries.push_front(entry);
    }

    /// Drops the oldest entries until `room` more fits.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((n, v)) = self.entries.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Decodes the header blocks of one connection, in order.
pub(crate) struct Decoder {
    /// Its size is the one the client last set (at most `limit`).
    table: Table,
    /// SETTINGS_HEADER_TABLE_SIZE as the proxy announced it.
    limit: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

/// Where a decoded string is: in the block, or in a scratch buffer.
enum Str {
    Raw(usize, usize),
    Decoded,
}

impl Decoder {
    pub(crate) fn new(limit: usize) -> Decoder {
        Decoder {
            table: Table::new(limit),
            limit,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Decodes `block`, calling `field(name, value)` for each field in
    /// order. A block is always decoded to its end, even when the caller
    /// has no use for it, or the table would no longer match the client's.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Error> {
        let mut at = 0;
        let mut first = true;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                // Indexed field.
                let (i, n) = integer(&block[at..], 7)?;
                at += n;
                match i {
                    0 => return Err(Error::Index(0)),
                    1..=61 => {
                        let (name, value) = STATIC[i - 1];
                        field(name.as_bytes(), value.as_bytes());
                    }
                    _ => {
                        let (name, value) = self.table.get(i).ok_or(Error::Index(i))?;
                        field(name, value);
                    }
                }
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                if !first {
                    return Err(Error::TableSize);
                }
                let (size, n) = integer(&block[at..], 5)?;
                at += n;
                if size > self.limit {
                    return Err(Error::TableSize);
                }
                self.table.resize(size);
                continue;
            } else {
                // A literal: with incremental indexing (01), or without
                // (0000) or never indexed (0001).
                let (prefix, index) = if b & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let (i, n) = integer(&block[at..], prefix)?;
                at += n;
                let name = if i == 0 {
                    let (s, n) = string(&block[at..], &mut self.name)?;
                    let s = offset(s, at);
                    at += n;
                    Some(s)
                } else {
                    None
                };
                let (v, n) = string(&block[at..], &mut self.value)?;
                let v = offset(v, at);
                at += n;
                let value: &[u8] = match v {
                    Str::Raw(a, b) => &block[a..b],
                    Str::Decoded => &self.value,
                };
                let name: &[u8] = match name {
                    Some(Str::Raw(a, b)) => &block[a..b],
                    Some(Str::Decoded) => &self.name,
                    None => match i {
                        1..=61 => STATIC[i - 1].0.as_bytes(),
                        _ => &self.table.get(i).ok_or(Error::Index(i))?.0,
                    },
                };
                field(name, value);
                if index {
                    self.table.insert((name.into(), value.into()));
                }
            }
            first = false;
        }
        Ok(())
    }
}

fn offset(s: Str, at: usize) -> Str {
    match s {
        Str::Raw(a, b) => Str::Raw(a + at, b + at),
        d => d,
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1): its value and the
/// bytes it took.
fn integer(buf: &[u8], n: u8) -> Result<(usize, usize), Error> {
    let mask = (1u16 << n) as usize - 1;
    let first = *buf.first().ok_or(Error::Truncated)? as usize & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = mask;
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        // Four continuation bytes reach 2^28: more than any length or
        // index the proxy accepts.
        if shift > 21 {
            return Err(Error::Overflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
        shift += 7;
    }
    Err(Error::Truncated)
}

/// A string literal (RFC 7541 §5.2): where it is (in `buf`, or decoded
/// into `scratch`) and the bytes it took.
fn string(buf: &[u8], scratch: &mut Vec<u8>) -> Result<(Str, usize), Error> {
    let huffman = buf.first().ok_or(Error::Truncated)? & 0x80 != 0;
    let (len, n) = integer(buf, 7)?;
    let end = n.checked_add(len).ok_or(Error::TooLong)?;
    if end > buf.len() {
        return Err(Error::Truncated);
    }
    if huffman {
        scratch.clear();
        huffman_decode(&buf[n..end], scratch)?;
        Ok((Str::Decoded, end))
    } else {
        Ok((Str::Raw(n, end), end))
    }
}

/// The Huffman code's length in bits for each symbol, 256 being EOS (RFC
/// 7541 Appendix B). The code is canonical, so the codes follow from the
/// lengths: [`codes`] rebuilds them, and a test checks them against the
/// RFC's examples.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The canonical code, per length: the first code of each length, how
/// many codes have it, and the symbols in code order.
struct Canonical {
    first: [u32; 31],
    count: [u16; 31],
    start: [u16; 31],
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static TABLE: std::sync::OnceLock<Canonical> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut c = Canonical {
            first: [0; 31],
            count: [0; 31],
            start: [0; 31],
            symbols: [0; 257],
        };
        for &l in &LENGTHS {
            c.count[l as usize] += 1;
        }
        let mut code = 0u32;
        let mut at = 0u16;
        for len in 1..31 {
            code = (code + u32::from(c.count[len - 1])) << 1;
            c.first[len] = code;
            c.start[len] = at;
            at += c.count[len];
        }
        let mut next = c.start;
        for (sym, &l) in LENGTHS.iter().enumerate() {
            let l = l as usize;
            c.symbols[next[l] as usize] = sym as u16;
            next[l] += 1;
        }
        c
    })
}

fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let c = canonical();
    let mut code = 0u32;
    let mut len = 0usize;
    // Whether every bit since the last symbol was 1 (padding is EOS's
    // prefix: all ones, at most 7 bits).
    let mut ones = true;
    for &byte in src {
        for shift in (0..8).rev() {
            let bit = u32::from(byte >> shift) & 1;
            code = (code << 1) | bit;
            len += 1;
            ones &= bit == 1;
            if len > 30 {
                return Err(Error::Huffman);
            }
            let offset = code.wrapping_sub(c.first[len]);
            if code >= c.first[len] && offset < u32::from(c.count[len]) {
                let sym = c.symbols[(c.start[len] as u32 + offset) as usize];
                if sym == 256 {
                    return Err(Error::Huffman);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
                ones = true;
            }
        }
    }
    if len > 7 || !ones {
        return Err(Error::Huffman);
    }
    Ok(())
}

/// The codes [`canonical`] assigns, by symbol (for the tests).
#[cfg(test)]
fn codes() -> Vec<(u32, u8)> {
    let c = canonical();
    let mut out = vec![(0, 0); 257];
    for len in 1..31 {
        for k in 0..c.count[len] {
            let sym = c.symbols[(c.start[len] + k) as usize] as usize;
            out[sym] = (c.first[len] + u32::from(k), len as u8);
        }
    }
    out
}

/// Writes an integer with an `n`-bit prefix, the first byte's other bits
/// being `flags`.
pub(crate) fn put_integer(out: &mut Vec<u8>, flags: u8, n: u8, value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// The encoder's table size when the client allows more: enough for a
/// few dozen answer fields.
const ENCODER_TABLE: usize = DEFAULT_TABLE;

/// Values longer than this are sent as they are, not indexed.
const INDEX_VALUE_MAX: usize = 256;

/// Encodes the header blocks of one connection's answers, in order.
pub(crate) struct Encoder {
    /// The client's decoder's table, as it will be once it has read what
    /// was encoded.
    table: Table,
    /// The client changed SETTINGS_HEADER_TABLE_SIZE: the size to say at
    /// the start of the next block.
    resize: Option<usize>,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder {
            // Both ends start from the protocol's default.
            table: Table::new(DEFAULT_TABLE),
            resize: None,
        }
    }
}

impl Encoder {
    /// The client's SETTINGS_HEADER_TABLE_SIZE. A client that repeats the
    /// size in use (as most say 4096 at the start) changes nothing.
    pub(crate) fn set_limit(&mut self, limit: u32) {
        let max = (limit as usize).min(ENCODER_TABLE);
        if self.resize.is_some() || max != self.table.max {
            self.resize = Some(max);
        }
    }

    /// Starts a block: a size change goes first (RFC 7541 §4.2). It goes
    /// through 0, below any size the client may have set in between.
    pub(crate) fn start(&mut self, out: &mut Vec<u8>) {
        if let Some(max) = self.resize.take() {
            put_integer(out, 0x20, 5, 0);
            self.table.resize(0);
            self.table.resize(max);
            if max > 0 {
                put_integer(out, 0x20, 5, max);
            }
        }
    }

    /// Writes `:status`: indexed where the static table has it.
    pub(crate) fn status(&mut self, out: &mut Vec<u8>, status: u16) {
        let index = match status {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if index > 0 {
            out.push(0x80 | index);
            return;
        }
        let digits = [
            b'0' + (status / 100 % 10) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
        ];
        self.field(out, b":status", &digits);
    }

    /// Writes a field: its index if the table has it; else a literal,
    /// added to the table if the field is one that repeats. `name` is
    /// lowercase, as `http` keeps it.
    pub(crate) fn field(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        let mut name_at = static_name(name);
        for (i, (n, v)) in self.table.entries.iter().enumerate() {
            if **n == *name {
                if **v == *value {
                    put_integer(out, 0x80, 7, 62 + i);
                    return;
                }
                name_at = name_at.or(Some(62 + i));
            }
        }
        let entry = name.len() + value.len() + ENTRY_OVERHEAD;
        let (flags, prefix) = match kind(name) {
            Kind::Secret => (0x10, 4),
            Kind::Changing => (0x00, 4),
            Kind::Repeating if value.len() > INDEX_VALUE_MAX || entry > self.table.max => (0x00, 4),
            Kind::Repeating => (0x40, 6),
        };
        match name_at {
            Some(i) => put_integer(out, flags, prefix, i),
            None => {
                out.push(flags);
                put_string(out, name);
            }
        }
        put_string(out, value);
        if flags == 0x40 {
            self.table.insert((name.into(), value.into()));
        }
    }
}

/// How the encoder treats a field.
enum Kind {
    /// Likely the same in the next answer: indexed.
    Repeating,
    /// Different in every answer: sent as it is.
    Changing,
    /// Never indexed, here or by any intermediary (RFC 7541 §7.1.3).
    Secret,
}

fn kind(name: &[u8]) -> Kind {
    match name {
        b"set-cookie" | b"cookie" | b"authorization" | b"proxy-authorization" => Kind::Secret,
        b"content-length"
        | b"content-range"
        | b"etag"
        | b"last-modified"
        | b"expires"
        | b"age"
        | b"location"
        | b"content-disposition"
        | b"x-request-id"
        | b"request-id"
        | b"x-amzn-trace-id"
        | b"traceparent"
        | b"tracestate"
        | b"grpc-message" => Kind::Changing,
        _ => Kind::Repeating,
    }
}

/// The static-table index of `:status` and the answer headers a task
/// commonly sends.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":status" => 8,
        b"content-type" => 31,
        b"content-length" => 28,
        b"date" => 33,
        b"server" => 54,
        b"cache-control" => 24,
        b"etag" => 34,
        b"last-modified" => 44,
        b"location" => 46,
        b"set-cookie" => 55,
        b"vary" => 59,
        b"content-encoding" => 26,
        b"expires" => 36,
        b"age" => 21,
        b"accept-ranges" => 18,
        b"allow" => 22,
        b"strict-transport-security" => 56,
        b"access-control-allow-origin" => 20,
        b"www-authenticate" => 61,
        b"retry-after" => 53,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ));
        })?;
        Ok(out)
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_canonical_code_matches_the_rfc() {
        let codes = codes();
        // Spot checks from RFC 7541 Appendix B.
        assert_eq!(codes[b' ' as usize], (0x14, 6));
        assert_eq!(codes[b'0' as usize], (0x0, 5));
        assert_eq!(codes[b'a' as usize], (0x3, 5));
        assert_eq!(codes[b'z' as usize], (0x7b, 7));
        assert_eq!(codes[0], (0x1ff8, 13));
        assert_eq!(codes[255], (0x3ffffee, 26));
        assert_eq!(codes[256], (0x3fffffff, 30));
    }

    /// RFC 7541 C.4: requests with Huffman coding, one connection.
    #[test]
    fn decodes_the_rfc_huffman_request_examples() {
        let mut d = Decoder::new(4096);
        let first = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(
            first,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        let second = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            second,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let third = decode_all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        )
        .unwrap();
        assert_eq!(
            third,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.table.size, 164);
    }

    /// RFC 7541 C.3 (no Huffman) and the eviction of C.5's small table.
    #[test]
    fn decodes_plain_literals_and_evicts_the_oldest_entries() {
        let mut d = Decoder::new(4096);
        let first = decode_all(
            &mut d,
            &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        )
        .unwrap();
        assert_eq!(first[3], (":authority".into(), "www.example.com".into()));
        // A size update to 60 keeps only the newest entry that fits: none
        // (":authority www.example.com" is 57 bytes, and fits alone).
        let r = decode_all(&mut d, &hex("3f1d 82")).unwrap();
        assert_eq!(r, pairs(&[(":method", "GET")]));
        assert_eq!(d.table.size, 57);
        assert_eq!(
            decode_all(&mut d, &hex("be")).unwrap()[0].1,
            "www.example.com"
        );
        // Adding a second entry evicts the first.
        decode_all(&mut d, &hex("4003 6162 6303 6465 66")).unwrap();
        assert_eq!(d.table.entries.len(), 1);
        assert_eq!(decode_all(&mut d, &hex("be")).unwrap()[0].0, "abc");
    }

    #[test]
    fn hostile_blocks_are_errors_not_panics() {
        let cases: &[(&str, Error)] = &[
            ("80", Error::Index(0)),
            ("be", Error::Index(62)),
            ("ff ff ff ff ff ff ff ff 7f", Error::Overflow),
            ("41", Error::Truncated),
            ("41 05 61", Error::Truncated),
            ("ff", Error::Truncated),
            // A Huffman string of eight one bits: padding longer than 7.
            ("41 81 ff", Error::Huffman),
            // EOS coded in full.
            ("41 84 ff ff ff ff", Error::Huffman),
            // A table size over the announced 4096.
            ("3f e2 1f", Error::TableSize),
            // A size update after a field.
            ("82 20", Error::TableSize),
        ];
        for (block, want) in cases {
            let mut d = Decoder::new(4096);
            assert_eq!(decode_all(&mut d, &hex(block)), Err(*want), "{block}");
        }
    }

    type Fields = Vec<(String, String)>;

    /// One block from the encoder: `fields`, after `:status`.
    fn block(e: &mut Encoder, status: u16, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        e.start(&mut out);
        e.status(&mut out, status);
        for (n, v) in fields {
            e.field(&mut out, n.as_bytes(), v.as_bytes());
        }
        out
    }

    fn owned(status: u16, fields: &[(&str, &str)]) -> Fields {
        let mut all = vec![(":status".to_string(), status.to_string())];
        all.extend(fields.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        all
    }

    #[test]
    fn the_encoder_indexes_what_repeats_and_the_decoder_follows() {
        let mut e = Encoder::default();
        let mut d = Decoder::new(4096);
        let answer = |n: usize| {
            let len = n.to_string();
            let id = format!("req-{n}");
            let fields = [
                ("content-type", "text/plain"),
                ("server", "webapp"),
                ("x-app", "a fairly long constant header value"),
                ("content-length", len.as_str()),
                ("x-request-id", id.as_str()),
                ("set-cookie", "session=secret"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()));
            fields
        };
        let mut sizes = Vec::new();
        for n in 0..5 {
            let fields = answer(n);
            let refs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let status = if n % 2 == 0 { 200 } else { 201 };
            let out = block(&mut e, status, &refs);
            sizes.push(out.len());
            assert_eq!(decode_all(&mut d, &out).unwrap(), owned(status, &refs));
        }
        // From the third on (201 is indexed with the second), the repeated
        // fields cost a byte each; the others are sent whole every time.
        assert!(sizes[4] == sizes[2] && sizes[4] * 2 < sizes[0], "{sizes:?}");
        // Indexed: 201, content-type, server, x-app; not the changing ones
        // nor the cookie.
        let names: Vec<&[u8]> = d.table.entries.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(!names.contains(&b"set-cookie".as_slice()));
        assert_eq!(e.table.size, d.table.size, "both tables hold the same");
    }

    #[test]
    fn the_encoder_evicts_and_resizes_as_the_client_does() {
        let mut e = Encoder::default();
        let mut d = Decoder::new(4096);
        let values: Vec<String> = (0..200).map(|i| format!("value number {i}")).collect();
        // Many distinct fields: the table fills and evicts.
        for chunk in values.chunks(10) {
            let fields: Vec<(&str, &str)> = chunk.iter().map(|v| ("x-v", v.as_str())).collect();
            let out = block(&mut e, 200, &fields);
            assert_eq!(decode_all(&mut d, &out).unwrap(), owned(200, &fields));
            assert!(e.table.size <= 4096);
            assert_eq!(e.table.size, d.table.size);
        }
        // The size in use again: nothing to say.
        e.set_limit(4096);
        let out = block(&mut e, 200, &[]);
        assert_eq!(out, [0x88]);
        // The client shrinks the table, then allows more than the encoder
        // uses; then forbids indexing.
        for (limit, used) in [(100, 100), (65_536, 4096), (0, 0)] {
            e.set_limit(limit);
            let fields = [("x-v", "after the change"), ("server", "webapp")];
            let out = block(&mut e, 200, &fields);
            assert_eq!(out[0], 0x20, "the block starts with the size change");
            assert_eq!(decode_all(&mut d, &out).unwrap(), owned(200, &fields));
            assert_eq!((e.table.max, d.table.max), (used, used));
            assert_eq!(e.table.size, d.table.size);
        }
        // A value over the table's size is never indexed.
        e.set_limit(4096);
        let long = "a".repeat(300);
        let fields = [("x-long", long.as_str())];
        let out = block(&mut e, 200, &fields);
        assert_eq!(decode_all(&mut d, &out).unwrap(), owned(200, &fields));
        assert_eq!(d.table.entries.len(), 0);
    }
}
