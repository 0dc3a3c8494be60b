// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small XML reader for S3's answers: `ListObjectsV2` results and error documents.
//!
//! Enough XML for what S3 servers send: elements (attributes skipped), text with the five
//! predefined entities and character references, CDATA, and the prolog, comments,
//! processing instructions and a `DOCTYPE` skipped. Nesting is bounded and end tags must
//! match. No `unsafe` and no panics on any input (proptested): this parses the server's
//! bytes.

use alloc::string::String;
use alloc::vec::Vec;

use crate::client::ObjectInfo;

use super::time::parse_iso8601;

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlError(pub &'static str);

/// One event of the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event<'a> {
    Start(&'a str),
    End(&'a str),
    Text(String),
}

/// A pull reader over a document.
struct Reader<'a> {
    rest: &'a str,
    /// Open elements.
    stack: Vec<&'a str>,
    /// An empty-element tag's end, to report next.
    pending_end: Option<&'a str>,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            rest: text,
            stack: Vec::new(),
            pending_end: None,
        }
    }

    /// Skips past `end` (a terminator of a construct that started at the front).
    fn skip_past(&mut self, end: &str) -> Result<(), XmlError> {
        let at = self
            .rest
            .find(end)
            .ok_or(XmlError("unterminated construct"))?;
        self.rest = &self.rest[at + end.len()..];
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Event<'a>>, XmlError> {
        if let Some(name) = self.pending_end.take() {
            self.stack.pop();
            return Ok(Some(Event::End(name)));
        }
        loop {
            if self.rest.is_empty() {
                if self.stack.is_empty() {
                    return Ok(None);
                }
                return Err(XmlError("unclosed element"));
            }
            if !self.rest.starts_with('<') {
                let end = self.rest.find('<').unwrap_or(self.rest.len());
                let raw = &self.rest[..end];
                self.rest = &self.rest[end..];
                if self.stack.is_empty() {
                    if raw.trim().is_empty() {
                        continue;
                    }
                    return Err(XmlError("text outside the root element"));
                }
                return Ok(Some(Event::Text(decode(raw)?)));
            }
            if self.rest.starts_with("<?") {
                self.skip_past("?>")?;
            } else if self.rest.starts_with("<!--") {
                self.skip_past("-->")?;
            } else if let Some(after) = self.rest.strip_prefix("<![CDATA[") {
                let at = after.find("]]>").ok_or(XmlError("unterminated CDATA"))?;
                let text = String::from(&after[..at]);
                self.rest = &after[at + 3..];
                if self.stack.is_empty() {
                    return Err(XmlError("text outside the root element"));
                }
                return Ok(Some(Event::Text(text)));
            } else if self.rest.starts_with("<!") {
                self.skip_past(">")?;
            } else if let Some(after) = self.rest.strip_prefix("</") {
                let at = after.find('>').ok_or(XmlError("unterminated end tag"))?;
                let name = after[..at].trim_end();
                self.rest = &after[at + 1..];
                if self.stack.pop() != Some(name) {
                    return Err(XmlError("mismatched end tag"));
                }
                return Ok(Some(Event::End(name)));
            } else {
                return self.start_tag().map(Some);
            }
        }
    }

    fn start_tag(&mut self) -> Result<Event<'a>, XmlError> {
        let after = &self.rest[1..];
        let at = tag_end(after).ok_or(XmlError("unterminated start tag"))?;
        let inner = &after[..at];
        self.rest = &after[at + 1..];
        let (inner, empty) = match inner.strip_suffix('/') {
            Some(inner) => (inner, true),
            None => (inner, false),
        };
        let name_end = inner
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(inner.len());
        let name = &inner[..name_end];
        if name.is_empty() || name.contains(['<', '&', '"', '\'']) {
            return Err(XmlError("bad element name"));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(XmlError("nested too deeply"));
        }
        self.stack.push(name);
        if empty {
            self.pending_end = Some(name);
        }
        Ok(Event::Start(name))
    }
}

/// The `>` ending a start tag, skipping quoted attribute values.
fn tag_end(text: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '>') => return Some(i),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

/// Decodes the entities and character references of a text node.
fn decode(raw: &str) -> Result<String, XmlError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(';')
            .filter(|&e| e <= 10)
            .ok_or(XmlError("unterminated reference"))?;
        let name = &after[..end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = name.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = name.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or(XmlError("unknown reference"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A `ListObjectsV2` result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListResult {
    /// The objects, as listed.
    pub entries: Vec<ObjectInfo>,
    /// Whether more follow.
    pub truncated: bool,
    /// The token for the next page.
    pub next_token: Option<String>,
}

/// Parses a `ListBucketResult` document.
pub fn parse_list(text: &str) -> Result<ListResult, XmlError> {
    let mut reader = Reader::new(text);
    let mut result = ListResult::default();
    let mut entry: Option<ObjectInfo> = None;
    let mut text_of: Option<&str> = None;
    let mut seen_root = false;
    while let Some(event) = reader.next()? {
        let depth = reader.stack.len();
        match event {
            Event::Start(name) => {
                if depth == 1 {
                    if name != "ListBucketResult" || seen_root {
                        return Err(XmlError("not a ListBucketResult"));
                    }
                    seen_root = true;
                } else if depth == 2 && name == "Contents" {
                    entry = Some(ObjectInfo {
                        key: String::new(),
                        size: 0,
                        last_modified_ms: 0,
                        etag: String::new(),
                    });
                }
                text_of = Some(name);
            }
            Event::End(name) => {
                if depth == 1 && name == "Contents" {
                    let done = entry.take().ok_or(XmlError("stray Contents"))?;
                    result.entries.push(done);
                }
                text_of = None;
            }
            Event::Text(value) => {
                let Some(name) = text_of else { continue };
                match (depth, name, entry.as_mut()) {
                    (2, "IsTruncated", _) => result.truncated = value.trim() == "true",
                    (2, "NextContinuationToken", _) => result.next_token = Some(value),
                    (3, "Key", Some(e)) => e.key.push_str(&value),
                    (3, "Size", Some(e)) => {
                        e.size = value.trim().parse().map_err(|_| XmlError("bad Size"))?
                    }
                    (3, "ETag", Some(e)) => e.etag.push_str(&value),
                    (3, "LastModified", Some(e)) => {
                        e.last_modified_ms = parse_iso8601(value.trim()).unwrap_or(0)
                    }
                    _ => {}
                }
            }
        }
    }
    if !seen_root {
        return Err(XmlError("empty document"));
    }
    Ok(result)
}

/// `(Code, Message)` of an S3 `Error` document.
pub fn parse_error(text: &str) -> Result<(String, String), XmlError> {
    let mut reader = Reader::new(text);
    let (mut code, mut message) = (String::new(), String::new());
    let mut text_of = None;
    let mut seen_root = false;
    while let Some(event) = reader.next()? {
        match event {
            Event::Start(name) => {
                if reader.stack.len() == 1 {
                    if name != "Error" {
                        return Err(XmlError("not an Error document"));
                    }
                    seen_root = true;
                }
                text_of = (reader.stack.len() == 2).then_some(name);
            }
            Event::End(_) => text_of = None,
            Event::Text(value) => match text_of {
                Some("Code") => code.push_str(&value),
                Some("Message") => message.push_str(&value),
                _ => {}
            },
        }
    }
    if !seen_root {
        return Err(XmlError("empty document"));
    }
    Ok((code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name><Prefix>a/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>
  <IsTruncated>true</IsTruncated>
  <Contents>
    <Key>a/one &amp; two</Key>
    <LastModified>2015-08-30T12:36:00.000Z</LastModified>
    <ETag>&quot;abc&quot;</ETag>
    <Size>434234</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents><Key><![CDATA[a/<three>]]></Key><Size>0</Size><Owner><ID>x</ID></Owner></Contents>
  <!-- comment -->
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
  <Empty/>
</ListBucketResult>"#;

    #[test]
    fn parses_a_list_result() {
        let result = parse_list(LIST).unwrap();
        assert!(result.truncated);
        assert_eq!(
            result.next_token.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
        assert_eq!(result.entries.len(), 2);
        let first = &result.entries[0];
        assert_eq!(first.key, "a/one & two");
        assert_eq!(first.size, 434_234);
        assert_eq!(first.etag, "\"abc\"");
        assert_eq!(first.last_modified_ms, 1_440_938_160_000);
        assert_eq!(result.entries[1].key, "a/<three>");
        assert_eq!(result.entries[1].size, 0);
        let empty =
            parse_list("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
                .unwrap();
        assert_eq!(empty, ListResult::default());
    }

    #[test]
    fn parses_errors_and_refuses_bad_documents() {
        let (code, message) = parse_error(
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>The key &#x27;k&#39; does not exist</Message><Key>k</Key></Error>",
        )
        .unwrap();
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("NoSuchKey", "The key 'k' does not exist")
        );
        for bad in [
            "",
            "<ListBucketResult>",
            "<ListBucketResult></Other>",
            "<Other></Other>",
            "text",
            "<ListBucketResult><Contents><Size>x</Size></Contents></ListBucketResult>",
            "<ListBucketResult>&bogus;</ListBucketResult>",
            "<ListBucketResult></ListBucketResult><ListBucketResult></ListBucketResult>",
            "<ListBucketResult><!-- </ListBucketResult>",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert_eq!(parse_error(&deep), Err(XmlError("not an Error document")));
        let deep_list = String::from("<ListBucketResult>") + &"<a>".repeat(100);
        assert_eq!(parse_list(&deep_list), Err(XmlError("nested too deeply")));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,400}") {
            let _ = parse_list(&text);
            let _ = parse_error(&text);
        }

        #[test]
        fn never_panics_on_xml_like_text(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("<ListBucketResult>"), Just("</ListBucketResult>"), Just("<Contents>"),
                    Just("</Contents>"), Just("<Key>"), Just("</Key>"), Just("<Size>"), Just("</Size>"),
                    Just("12"), Just("&amp;"), Just("&#x10FFFF;"), Just("&#xD800;"), Just("<![CDATA["),
                    Just("]]>"), Just("<!--"), Just("-->"), Just("<?"), Just("?>"), Just("<a b=\">\"/>"),
                    Just("é"), Just("<"), Just(">"), Just("&"), Just(";"), Just("<IsTruncated>"),
                    Just("true"), Just("</IsTruncated>"), Just("<Error>"), Just("<Code>"),
                ],
                0..40,
            )
        ) {
            let text: String = parts.concat();
            let _ = parse_list(&text);
            let _ = parse_error(&text);
        }

        #[test]
        fn lists_round_trip(keys in proptest::collection::vec("[a-z0-9/&<> ]{1,20}", 0..10)) {
            let mut doc = String::from("<ListBucketResult>");
            for (i, key) in keys.iter().enumerate() {
                let escaped = key.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
                doc.push_str(&alloc::format!("<Contents><Key>{escaped}</Key><Size>{i}</Size></Contents>"));
            }
            doc.push_str("</ListBucketResult>");
            let result = parse_list(&doc).unwrap();
            let parsed: Vec<&str> = result.entries.iter().map(|e| e.key.as_str()).collect();
            let expected: Vec<&str> = keys.iter().map(String::as_str).collect();
            prop_assert_eq!(parsed, expected);
        }
    }
}
