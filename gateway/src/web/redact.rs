//! What the device API shows of texts written for the server's log: step
//! failure reasons may name files by their absolute server path (a spool
//! page, a work file, a delivery folder), and devices must never see one.
//! It only rewrites text; it decides nothing about what a reason says.

/// Characters that end a path inside a sentence.
fn ends_path(c: char) -> bool {
    c.is_whitespace() || matches!(c, ')' | ']' | '`' | '\'' | '"' | ',' | ';' | ':')
}

/// Characters after which a `/` starts a path (rather than being part of a
/// word such as `and/or` or a URL's path, which follow letters).
fn starts_path_after(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => c.is_whitespace() || matches!(c, '(' | '[' | '`' | '\'' | '"' | '='),
    }
}

/// `text` with every absolute path replaced by its last component
/// (`cannot read /var/lib/gw/spool/jobs/…/page-0001.png: …` becomes
/// `cannot read page-0001.png: …`): the file stays recognisable to the
/// person at the device, the server's layout does not show.
pub fn without_server_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        if c == '/' && starts_path_after(previous) {
            let end = rest.find(ends_path).unwrap_or(rest.len());
            let path = &rest[..end];
            let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            out.push_str(if last.is_empty() { "/" } else { last });
            previous = path.chars().last();
            rest = &rest[end..];
            continue;
        }
        out.push(c);
        previous = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_lose_their_directories_and_other_text_stays() {
        let cases = [
            (
                "cannot read /var/lib/scan-gateway/gw-a/gw-a-spool/jobs/1f/page-0001.png: permission denied",
                "cannot read page-0001.png: permission denied",
            ),
            (
                "folder delivery to /srv/share/2030-01-01/ann-1.pdf failed creating /srv/share/2030-01-01",
                "folder delivery to ann-1.pdf failed creating 2030-01-01",
            ),
            (
                "the root /mnt/scans is not available (no such file or directory); is the share mounted?",
                "the root scans is not available (no such file or directory); is the share mounted?",
            ),
            ("writing `/tmp/x/ocr/p1.pdf`", "writing `p1.pdf`"),
            (
                "webhook https://example.test/hooks/scan answered 503 and/or timed out",
                "webhook https://example.test/hooks/scan answered 503 and/or timed out",
            ),
            ("page 3 is 10x10 pixels", "page 3 is 10x10 pixels"),
            ("/", "/"),
        ];
        for (text, expected) in cases {
            assert_eq!(without_server_paths(text), expected, "{text}");
        }
    }
}
