//! A receiver connection as h2 should see it: requests whose `:authority` is
//! not a valid URI authority get `localhost` instead.
//!
//! Why: gRPC clients (Python's grpcio, grpc-java, grpc-swift) send the
//! socket path, percent-encoded, as `:authority` (`%2Ftmp%2Fx.sock`). h2
//! refuses such a request with PROTOCOL_ERROR before any service sees it, and
//! has no setting to relax that. On a Unix socket the authority says nothing
//! (the socket is the peer), so the receiver replaces it.
//!
//! How: the client's frames pass through here before h2 reads them. The
//! first header block is decoded (HPACK); if its `:authority` is valid, its
//! bytes go on unchanged and so does the rest of the connection (Envoy's
//! case: one decode, then plain reads). Otherwise every header block of the
//! connection is decoded and re-encoded as literals without indexing, so
//! h2's HPACK table stays empty and never drifts from the client's, with the
//! authority replaced. DATA and every other frame pass unchanged.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame every HTTP/2 peer accepts (the initial
/// SETTINGS_MAX_FRAME_SIZE); re-encoded blocks are split to fit it.
const MAX_FRAME: usize = 16_384;
/// The most header block (encoded) and header list (decoded) a request may
/// carry; more closes the connection. h2 allows 16 KiB of header list.
const MAX_BLOCK: usize = 64 * 1024;
const MAX_HEADER_LIST: usize = 256 * 1024;
/// The HPACK table size h2 advertises (the initial SETTINGS_HEADER_TABLE_SIZE).
const HPACK_TABLE: usize = 4096;
/// What replaces an authority h2 would refuse.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Until the first header block: is this client one that needs help?
    Sniffing,
    /// Every header block is decoded and re-encoded.
    Rewriting,
    /// Bytes go through untouched (a valid first authority, or not HTTP/2).
    Raw,
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct Block {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, sent on unchanged if nothing needs fixing.
    original: Vec<u8>,
}

/// `io` with the client's `:authority` made acceptable to h2 (see the module docs).
pub struct AuthorityFix<IO> {
    io: IO,
    mode: Mode,
    preface_seen: bool,
    /// Read from the client, not looked at yet.
    input: BytesMut,
    /// Ready for h2.
    output: BytesMut,
    /// Payload bytes of the current frame to forward as they are.
    passthrough: usize,
    block: Option<Block>,
    hpack: loona_hpack::Decoder<'static>,
    eof: bool,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(HPACK_TABLE);
        AuthorityFix {
            io,
            mode: Mode::Sniffing,
            preface_seen: false,
            input: BytesMut::new(),
            output: BytesMut::new(),
            passthrough: 0,
            block: None,
            hpack,
            eof: false,
        }
    }

    /// Looks at buffered input once; false when it needs more bytes.
    fn step(&mut self) -> io::Result<bool> {
        if !self.preface_seen {
            let have = self.input.len().min(PREFACE.len());
            if self.input[..have] != PREFACE[..have] {
                // Not HTTP/2 with prior knowledge: h2 will say so.
                self.mode = Mode::Raw;
                return Ok(true);
            }
            if have < PREFACE.len() {
                return Ok(false);
            }
            self.output.extend_from_slice(&self.input.split_to(PREFACE.len()));
            self.preface_seen = true;
            return Ok(true);
        }
        if self.input.len() < FRAME_HEADER {
            return Ok(false);
        }
        let len = usize::from(self.input[0]) << 16 | usize::from(self.input[1]) << 8 | usize::from(self.input[2]);
        let (kind, flags) = (self.input[3], self.input[4]);
        let stream = [self.input[5], self.input[6], self.input[7], self.input[8]];
        if kind != HEADERS && kind != CONTINUATION {
            if self.block.is_some() {
                return Err(broken("a header block was interrupted by another frame"));
            }
            self.output.extend_from_slice(&self.input.split_to(FRAME_HEADER));
            self.passthrough = len;
            return Ok(true);
        }
        if len > MAX_BLOCK {
            return Err(broken("header frame too large"));
        }
        if self.input.len() < FRAME_HEADER + len {
            return Ok(false);
        }
        let frame = self.input.split_to(FRAME_HEADER + len);
        self.header_frame(kind, flags, stream, &frame)?;
        Ok(true)
    }

    fn header_frame(&mut self, kind: u8, flags: u8, stream: [u8; 4], frame: &[u8]) -> io::Result<()> {
        let payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            if self.block.is_some() {
                return Err(broken("HEADERS inside a header block"));
            }
            let (mut start, mut end) = (0, payload.len());
            if flags & PADDED != 0 {
                let pad = usize::from(*payload.first().ok_or_else(|| broken("padded HEADERS without padding"))?);
                start = 1;
                end = end.checked_sub(pad).ok_or_else(|| broken("HEADERS padding longer than the frame"))?;
            }
            let priority = if flags & PRIORITY != 0 {
                let bytes = payload.get(start..start + 5).ok_or_else(|| broken("HEADERS priority cut short"))?;
                start += 5;
                Some([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]])
            } else {
                None
            };
            let fragment = payload.get(start..end).ok_or_else(|| broken("HEADERS padding longer than the frame"))?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                original: frame.to_vec(),
            });
        } else {
            let block = self.block.as_mut().ok_or_else(|| broken("CONTINUATION outside a header block"))?;
            if block.stream != stream {
                return Err(broken("CONTINUATION on another stream"));
            }
            block.fragment.extend_from_slice(payload);
            block.original.extend_from_slice(frame);
            if block.fragment.len() > MAX_BLOCK {
                return Err(broken("header block too large"));
            }
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish(block)?;
            }
        }
        Ok(())
    }

    /// Decodes a complete header block and sends it on, as it was or re-encoded.
    fn finish(&mut self, block: Block) -> io::Result<()> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        self.hpack
            .decode_with_cb(&block.fragment, |name, value| {
                size += name.len() + value.len() + 32;
                if size <= MAX_HEADER_LIST {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| broken(&format!("header block does not decode: {e:?}")))?;
        if size > MAX_HEADER_LIST {
            return Err(broken("header list too large"));
        }
        let mut replaced = false;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                *value = REPLACEMENT_AUTHORITY.to_vec();
                replaced = true;
            }
        }
        if self.mode == Mode::Sniffing && !replaced {
            self.output.extend_from_slice(&block.original);
            self.mode = Mode::Raw;
            return Ok(());
        }
        if self.mode == Mode::Sniffing {
            tracing::debug!(
                "client sent an :authority h2 refuses (a socket path?); using localhost for this connection"
            );
        }
        self.mode = Mode::Rewriting;
        let mut payload = Vec::with_capacity(block.fragment.len() + 64);
        payload.extend_from_slice(block.priority.as_ref().map_or(&[][..], |p| &p[..]));
        for (name, value) in &fields {
            encode_literal(&mut payload, name, value);
        }
        let chunks: Vec<&[u8]> = payload.chunks(MAX_FRAME).collect();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            let (kind, mut flags) = if i == 0 { (HEADERS, 0) } else { (CONTINUATION, 0) };
            if i == 0 && block.end_stream {
                flags |= END_STREAM;
            }
            if i == 0 && block.priority.is_some() {
                flags |= PRIORITY;
            }
            if i == last {
                flags |= END_HEADERS;
            }
            put_frame_header(&mut self.output, chunk.len(), kind, flags, block.stream);
            self.output.extend_from_slice(chunk);
        }
        if chunks.is_empty() {
            let flags = END_HEADERS | if block.end_stream { END_STREAM } else { 0 };
            put_frame_header(&mut self.output, 0, HEADERS, flags, block.stream);
        }
        Ok(())
    }
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 from the client: {what}"))
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    // `len` is at most MAX_FRAME, so it fits the 24-bit length.
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream);
}

/// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541, section 5.1).
fn encode_integer(out: &mut Vec<u8>, first_byte: u8, prefix_bits: u32, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first_byte | value as u8);
        return;
    }
    out.push(first_byte | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A field as "literal without indexing, new name", strings without Huffman
/// coding (RFC 7541, section 6.2.2): it never touches the decoder's table.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for s in [name, value] {
        encode_integer(out, 0x00, 7, s.len());
        out.extend_from_slice(s);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            let raw = this.mode == Mode::Raw;
            if (raw || this.passthrough > 0) && !this.input.is_empty() {
                let limit = if raw { this.input.len() } else { this.passthrough.min(this.input.len()) };
                let n = limit.min(buf.remaining());
                buf.put_slice(&this.input[..n]);
                this.input.advance(n);
                if !raw {
                    this.passthrough -= n;
                }
                return Poll::Ready(Ok(()));
            }
            if raw {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.passthrough == 0 && this.step()? {
                continue;
            }
            if this.eof {
                // A frame cut short by the client's close: h2 sees the close.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.input.extend_from_slice(read.filled());
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client's opening: preface, SETTINGS, then one request's HEADERS
    /// with `authority`, as gRPC clients send it.
    pub(crate) fn client_request(authority: &[u8], stream: u8, with_preface: bool) -> Vec<u8> {
        let mut block = Vec::new();
        for (n, v) in [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/opentelemetry.proto.collector.trace.v1.TraceService/Export"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ] {
            encode_literal(&mut block, n, v);
        }
        let mut out = BytesMut::new();
        if with_preface {
            out.extend_from_slice(PREFACE);
            put_frame_header(&mut out, 0, 0x4, 0, [0; 4]);
        }
        put_frame_header(&mut out, block.len(), HEADERS, END_HEADERS, [0, 0, 0, stream]);
        out.extend_from_slice(&block);
        out.to_vec()
    }

    async fn through(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        AuthorityFix::new(bytes).read_to_end(&mut out).await?;
        Ok(out)
    }

    /// The header fields of every HEADERS frame in `bytes` (after the preface).
    fn decoded_requests(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rest = bytes.strip_prefix(PREFACE).expect("preface first");
        let mut hpack = loona_hpack::Decoder::new();
        let mut requests = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            if rest[3] == HEADERS {
                requests.push(hpack.decode(&rest[FRAME_HEADER..FRAME_HEADER + len]).expect("decodes"));
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        requests
    }

    fn authority(fields: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &fields.iter().find(|(n, _)| n.as_slice() == b":authority").expect("has :authority").1
    }

    #[tokio::test]
    async fn socket_path_authorities_become_localhost() {
        let mut input = client_request(b"%2Ftmp%2Fx.sock", 1, true);
        input.extend(client_request(b"%2Ftmp%2Fx.sock", 3, false));
        let out = through(&input).await.expect("passes");
        let requests = decoded_requests(&out);
        assert_eq!(requests.len(), 2);
        for fields in &requests {
            assert_eq!(authority(fields), REPLACEMENT_AUTHORITY);
            assert_eq!(fields.len(), 6, "every other field kept");
        }
        for bad in [&b"/tmp/x.sock"[..], b""] {
            let out = through(&client_request(bad, 1, true)).await.expect("passes");
            assert_eq!(authority(&decoded_requests(&out)[0]), REPLACEMENT_AUTHORITY);
        }
    }

    #[tokio::test]
    async fn valid_authorities_pass_untouched() {
        let mut input = client_request(b"localhost:4317", 1, true);
        input.extend(client_request(b"%2Fafter", 3, false));
        // The first block decides: this connection is left alone.
        assert_eq!(through(&input).await.expect("passes"), input);
        let not_http2 = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(through(not_http2).await.expect("passes"), not_http2);
    }

    #[tokio::test]
    async fn large_blocks_are_split_and_broken_input_is_refused() {
        let huge = vec![b'a'; 40_000];
        let mut block = Vec::new();
        encode_literal(&mut block, b":authority", b"%2Fx");
        encode_literal(&mut block, b"x-big", &huge);
        let mut input = PREFACE.to_vec();
        let mut frames = BytesMut::new();
        // One block over three frames: HEADERS + two CONTINUATIONs.
        let parts: Vec<&[u8]> = block.chunks(16_000).collect();
        for (i, part) in parts.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i == parts.len() - 1 { END_HEADERS } else { 0 };
            put_frame_header(&mut frames, part.len(), kind, flags, [0, 0, 0, 1]);
            frames.extend_from_slice(part);
        }
        input.extend_from_slice(&frames);
        let out = through(&input).await.expect("passes");
        let mut rest = &out[PREFACE.len()..];
        let mut fragment = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            assert!(len <= MAX_FRAME);
            fragment.extend_from_slice(&rest[FRAME_HEADER..FRAME_HEADER + len]);
            rest = &rest[FRAME_HEADER + len..];
        }
        let fields = loona_hpack::Decoder::new().decode(&fragment).expect("decodes");
        assert_eq!(fields[0], (b":authority".to_vec(), REPLACEMENT_AUTHORITY.to_vec()));
        assert_eq!(fields[1].1, huge);

        let mut garbage = PREFACE.to_vec();
        let mut frame = BytesMut::new();
        put_frame_header(&mut frame, 3, HEADERS, END_HEADERS, [0, 0, 0, 1]);
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        garbage.extend_from_slice(&frame);
        assert!(through(&garbage).await.is_err(), "a block that does not decode closes the connection");
    }
}
