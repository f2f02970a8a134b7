//! An HPACK decoder (RFC 7541) for `jisu bench --frames`: the answers' header blocks,
//! each field handed to a callback, the dynamic table kept in step.
//!
//! Small on purpose: a gRPC server's answers are a few fields, most of them indexed, plus
//! one fresh literal per call (Jisu's `x-trace-id`), so what matters is a fast Huffman
//! decoder (httlib-huffman's table-driven one; loona-hpack's decodes bit by bit through a
//! hash map and cost 20 µs per answer) and no allocation for indexed fields.
use std::collections::VecDeque;

/// The dynamic table's size until the peer's encoder says otherwise: the default, which
/// the client's SETTINGS (h2's) leave as it is.
const TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// One side's decoder: the dynamic table its peer's encoder fills.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    /// RFC 7541 §4.1: each entry's name and value lengths plus 32.
    size: usize,
    /// The table's size as the encoder last set it (at most [`TABLE_SIZE`]).
    max: Option<usize>,
}

impl Decoder {
    /// Decodes `block`, handing each field to `field` as (name, value).
    pub(super) fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), &'static str> {
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(&mut block, 7)?;
                let (name, value) = self.get(index)?;
                field(name, value);
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let max = integer(&mut block, 5)?;
                if max > TABLE_SIZE {
                    return Err("a table size update past the table's limit");
                }
                self.max = Some(max);
                self.evict(0);
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let indexing = first & 0x40 != 0;
                let index = integer(&mut block, if indexing { 6 } else { 4 })?;
                let name = match index {
                    0 => string(&mut block)?,
                    _ => self.get(index)?.0.to_vec(),
                };
                let value = string(&mut block)?;
                field(&name, &value);
                if indexing {
                    self.insert(name, value);
                }
            }
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), &'static str> {
        match index {
            0 => Err("index 0"),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or("an index past the table"),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        // An entry larger than the table empties it and is not added (§4.4).
        if size <= self.max.unwrap_or(TABLE_SIZE) {
            self.size += size;
            self.table
                .push_front((name.into_boxed_slice(), value.into_boxed_slice()));
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        let max = self.max.unwrap_or(TABLE_SIZE);
        while self.size + room > max {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

/// An integer with an `prefix`-bit prefix (§5.1), taken off the front of `buf`.
fn integer(buf: &mut &[u8], prefix: u8) -> Result<usize, &'static str> {
    let (&first, mut rest) = buf.split_first().ok_or("a block cut inside an integer")?;
    let mask = (1u8 << prefix) - 1;
    let mut value = usize::from(first & mask);
    if value == usize::from(mask) {
        let mut shift = 0;
        loop {
            let (&byte, tail) = rest.split_first().ok_or("a block cut inside an integer")?;
            rest = tail;
            if shift > 21 {
                return Err("an integer too large");
            }
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *buf = rest;
    Ok(value)
}

/// A string literal (§5.2), Huffman-coded or not, taken off the front of `buf`.
fn string(buf: &mut &[u8]) -> Result<Vec<u8>, &'static str> {
    let huffman = buf.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(buf, 7)?;
    let Some((raw, rest)) = buf.split_at_checked(len) else {
        return Err("a block cut inside a string");
    };
    *buf = rest;
    if !huffman {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::with_capacity(len * 8 / 5 + 1);
    httlib_huffman::decode(raw, &mut out, httlib_huffman::DecoderSpeed::FourBits)
        .map_err(|_| "a string with bad Huffman coding")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_rfcs_examples_decode_with_their_tables() {
        // RFC 7541 C.4: three requests, Huffman-coded, sharing one table.
        let mut d = Decoder::default();
        let c41 = hex("828684418cf1e3c2e5f23a6ba0ab90f4ff");
        assert_eq!(
            fields(&mut d, &c41),
            Ok(pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]))
        );
        assert_eq!(d.size, 57);
        let c42 = hex("828684be5886a8eb10649cbf");
        assert_eq!(
            fields(&mut d, &c42).unwrap().last(),
            Some(&("cache-control".into(), "no-cache".into()))
        );
        assert_eq!(d.size, 110);
        let c43 = hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf");
        assert_eq!(
            fields(&mut d, &c43),
            Ok(pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ]))
        );
        assert_eq!(d.size, 164);
        // C.5/C.6: answers that evict (a table of 256 bytes).
        let mut d = Decoder {
            max: Some(256),
            ..Decoder::default()
        };
        let c61 = hex(
            "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        );
        assert_eq!(fields(&mut d, &c61).unwrap().len(), 4);
        assert_eq!(d.size, 222);
        let c62 = hex("4883640effc1c0bf");
        assert_eq!(
            fields(&mut d, &c62).unwrap()[0],
            (":status".into(), "307".into())
        );
        // ":status: 307" went in and the oldest entry (":status: 302") out.
        assert_eq!(d.size, 222);
        assert_eq!(d.table.len(), 4);
    }

    #[test]
    fn broken_blocks_are_errors_not_panics() {
        for (bad, why) in [
            (&b"\xff"[..], "a block cut inside an integer"),
            (b"\xff\xff\xff\xff\xff\x7f", "an integer too large"),
            (b"\xbe", "an index past the table"), // 62, the table empty
            (b"\x80", "index 0"),
            (b"\x40\x85ab", "a block cut inside a string"),
            (
                b"\x3f\xe2\x1f",
                "a table size update past the table's limit",
            ), // 4,097
        ] {
            assert_eq!(
                Decoder::default().decode(bad, |_, _| {}),
                Err(why),
                "{bad:?}"
            );
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
