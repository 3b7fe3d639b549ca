//! The PROXY protocol (versions 1 and 2), which L4 load balancers such as
//! HAProxy in TCP mode put in front of each connection so the server learns
//! the client's real address. A listener configured for it (`listen_proxy`)
//! requires the header on every connection and refuses connections without
//! one: accepting both would let any client forge its address.
//!
//! [`parse`] is pure and total over bytes (it is fuzzed and property-tested);
//! [`read_header`] reads from a socket and gives back the bytes that followed
//! the header through [`PrefixedIo`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
const V1_MAX: usize = 107;
/// Longest v2 header we accept: addresses plus a generous allowance of TLVs.
const V2_MAX: usize = 16 + 4096;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes the header occupied.
    pub len: usize,
    /// The client's address; `None` for `LOCAL` (health checks by the
    /// balancer itself) and `UNKNOWN`.
    pub source: Option<SocketAddr>,
}

/// What is wrong with a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error(
        "the connection did not start with a PROXY protocol header (this listener requires one)"
    )]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    BadV2(&'static str),
}

/// Parses a header at the start of `buf`. `Ok(None)` means more bytes are
/// needed.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let v1 = b"PROXY ";
    if buf[0] == b'P' {
        let n = buf.len().min(v1.len());
        if buf[..n] != v1[..n] {
            return Err(ProxyHeaderError::Missing);
        }
        return parse_v1(buf);
    }
    if buf[0] == V2_SIGNATURE[0] {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Err(ProxyHeaderError::Missing);
        }
        return parse_v2(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::BadV1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line =
        std::str::from_utf8(&buf[..end]).map_err(|_| ProxyHeaderError::BadV1("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match fields.get(1).copied() {
        Some("UNKNOWN") => Ok(Some(ProxyHeader { len, source: None })),
        Some(proto @ ("TCP4" | "TCP6")) => {
            let [_, _, src, dst, sport, dport] = fields.as_slice() else {
                return Err(ProxyHeaderError::BadV1("expected 6 fields"));
            };
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyHeaderError::BadV1("bad source address"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyHeaderError::BadV1("bad destination address"))?;
            let v4 = proto == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(ProxyHeaderError::BadV1(
                    "address family does not match the protocol",
                ));
            }
            let port = |p: &str| -> Result<u16, ProxyHeaderError> {
                // Ports are decimal without leading zeros or signs.
                if p.is_empty()
                    || p.len() > 5
                    || !p.bytes().all(|b| b.is_ascii_digit())
                    || (p.len() > 1 && p.starts_with('0'))
                {
                    return Err(ProxyHeaderError::BadV1("bad port"));
                }
                p.parse().map_err(|_| ProxyHeaderError::BadV1("bad port"))
            };
            let sport = port(sport)?;
            port(dport)?;
            Ok(Some(ProxyHeader {
                len,
                source: Some(SocketAddr::new(src, sport)),
            }))
        }
        _ => Err(ProxyHeaderError::BadV1(
            "unknown protocol (expected TCP4, TCP6 or UNKNOWN)",
        )),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::BadV2("version is not 2"));
    }
    let command = ver_cmd & 0x0F;
    let fam = buf[13];
    let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > V2_MAX {
        return Err(ProxyHeaderError::BadV2("header too long"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    match command {
        0 => return Ok(Some(ProxyHeader { len, source: None })),
        1 => {}
        _ => return Err(ProxyHeaderError::BadV2("unknown command")),
    }
    let source = match fam {
        0x11 | 0x12 => {
            if body.len() < 12 {
                return Err(ProxyHeaderError::BadV2("IPv4 address block too short"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        0x21 | 0x22 => {
            if body.len() < 36 {
                return Err(ProxyHeaderError::BadV2("IPv6 address block too short"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        // UNSPEC or UNIX sockets: no usable client address.
        0x00 | 0x31 | 0x32 => None,
        _ => return Err(ProxyHeaderError::BadV2("unknown address family")),
    };
    Ok(Some(ProxyHeader { len, source }))
}

/// Reads a PROXY header from `io` within `timeout`. Returns the header and a
/// stream that first yields whatever was read past it (the start of TLS).
pub async fn read_header<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
) -> io::Result<(ProxyHeader, PrefixedIo<T>)> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            if let Some(header) =
                parse(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return Ok::<_, io::Error>(header);
            }
            let mut chunk = [0u8; 512];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the PROXY header",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let header = tokio::time::timeout(timeout, read).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no PROXY header within the time limit",
        )
    })??;
    let rest = buf.split_off(header.len);
    Ok((
        header,
        PrefixedIo {
            prefix: rest,
            pos: 0,
            inner: io,
        },
    ))
}

/// A stream that yields `prefix` before reading from `inner`.
pub struct PrefixedIo<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(out.remaining());
            let start = self.pos;
            out.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nTLS")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(h.len, 41);
        let h = parse(b"PROXY TCP6 2001:db8::1 ::1 4000 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);
    }

    #[test]
    fn v1_incomplete_and_bad() {
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        assert_eq!(parse(b"PRO").unwrap(), None);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            parse(&[0x16, 0x03, 0x01]),
            Err(ProxyHeaderError::Missing),
            "a bare TLS hello is refused"
        );
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 1\r\n").is_err());
        assert!(parse(b"PROXY UDP4 1.2.3.4 5.6.7.8 1 1\r\n").is_err());
        assert!(parse(&[b"PROXY ".as_slice(), &[b'A'; 120]].concat()).is_err());
    }

    #[test]
    fn v2_proxy_local_and_families() {
        let body = [192, 0, 2, 9, 10, 0, 0, 1, 0x1F, 0x90, 0x01, 0xBB];
        let h = parse(&v2(1, 0x11, &body)).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.9:8080".parse().unwrap()));
        assert_eq!(h.len, 28);
        let h = parse(&v2(0, 0x00, &[])).unwrap().unwrap();
        assert_eq!(h.source, None, "LOCAL: the balancer's own health check");
        let mut b6 = vec![0u8; 36];
        b6[15] = 1;
        b6[32] = 0x13;
        b6[33] = 0x88;
        assert_eq!(
            parse(&v2(1, 0x21, &b6)).unwrap().unwrap().source,
            Some("[::1]:5000".parse().unwrap())
        );
        // With TLVs after the addresses.
        let mut with_tlv = body.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x02, 0xAA, 0xBB]);
        assert_eq!(
            parse(&v2(1, 0x11, &with_tlv)).unwrap().unwrap().len,
            16 + 17
        );
        assert_eq!(parse(&v2(1, 0x11, &body)[..20]).unwrap(), None);
        assert!(parse(&v2(1, 0x11, &body[..4])).is_err());
        assert!(parse(&v2(7, 0x11, &body)).is_err());
    }

    #[tokio::test]
    async fn read_header_replays_the_bytes_after_it() {
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(
            &mut client,
            b"PROXY TCP4 192.0.2.7 10.0.0.1 5 443\r\nhello",
        )
        .await
        .unwrap();
        drop(client);
        let (h, mut rest) = read_header(server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(h.source.unwrap().port(), 5);
        let mut s = String::new();
        rest.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello");
    }

    #[tokio::test]
    async fn read_header_times_out_on_silence() {
        let (_client, server) = tokio::io::duplex(64);
        let err = read_header(server, Duration::from_millis(50))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_after_a_valid_prefix(tail in proptest::collection::vec(any::<u8>(), 0..200), v in 0..2u8) {
            let mut bytes = if v == 0 { b"PROXY TCP4 ".to_vec() } else { V2_SIGNATURE.to_vec() };
            bytes.extend(tail);
            if let Ok(Some(h)) = parse(&bytes) {
                prop_assert!(h.len <= bytes.len());
            }
        }

        #[test]
        fn v1_round_trip(a in any::<[u8; 4]>(), port in 1u16..) {
            let ip = Ipv4Addr::from(a);
            let text = format!("PROXY TCP4 {ip} 10.0.0.1 {port} 443\r\n");
            let h = parse(text.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(h.source, Some(SocketAddr::new(IpAddr::V4(ip), port)));
            prop_assert_eq!(h.len, text.len());
        }
    }
}
