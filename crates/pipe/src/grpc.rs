//! gRPC's unary call framed by hand on both sides of the pipe, so that a
//! request's bytes are never gathered into a buffer on their way through:
//! the receiver takes the message as the HTTP/2 DATA frames brought it (one
//! copy only when it spans several frames), and the exporter sends the queued
//! requests as they are, each its own body chunk, behind one 5-byte message
//! header. tonic's codecs would copy every byte into a buffer on each side.

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::http::{self, header, HeaderMap, HeaderValue};
use tonic::codegen::Service;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The largest message the receiver takes (decompressed): tonic's default.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The receiver's HTTP/2 frame limit (the protocol's default is 16 KiB):
/// requests up to this size can arrive as one frame.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
/// The receiver's HTTP/2 flow-control windows, per stream and per
/// connection: a whole message may be in flight (the default is 64 KiB).
pub const WINDOW_BYTES: u32 = MAX_MESSAGE_BYTES as u32 + 5;

/// A body of frames known in advance: the exporter's request (data only)
/// and the receiver's answer (an empty message, then the trailers).
#[derive(Default)]
pub(crate) struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn grpc_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
}

/// What a message looks like on the wire: `parts` back to back.
pub(crate) enum Message<'a> {
    Plain(&'a [Bytes]),
    Gzip(&'a [Bytes]),
}

impl Message<'_> {
    /// The body chunks: the 5-byte message header, then the message.
    fn frames(&self) -> Result<VecDeque<Frame<Bytes>>, Status> {
        let (compressed, mut chunks) = match self {
            Message::Plain(parts) => (false, parts.to_vec()),
            Message::Gzip(parts) => (true, vec![gzip(parts)?]),
        };
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let len = u32::try_from(len)
            .map_err(|_| Status::resource_exhausted(format!("a message of {len} bytes is more than gRPC can frame")))?;
        let mut head = BytesMut::with_capacity(5);
        head.put_u8(u8::from(compressed));
        head.put_u32(len);
        chunks.insert(0, head.freeze());
        Ok(chunks.into_iter().map(Frame::data).collect())
    }
}

fn gzip(parts: &[Bytes]) -> Result<Bytes, Status> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for part in parts {
        gz.write_all(part).map_err(|e| Status::internal(format!("gzip failed: {e}")))?;
    }
    gz.finish().map(Bytes::from).map_err(|e| Status::internal(format!("gzip failed: {e}")))
}

/// One unary call on `channel` (ready) of `path` with `message`, the
/// caller's `metadata`, and `timeout` for the whole call, answer included.
/// The answer's message is read and left: OTLP's partial success is not used.
pub(crate) async fn unary(
    channel: &mut Channel,
    path: &'static str,
    message: Message<'_>,
    metadata: &HeaderMap,
    timeout: Duration,
) -> Result<(), Status> {
    let mut request = http::Request::new(tonic::body::Body::new(Frames(message.frames()?)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    let headers = request.headers_mut();
    grpc_headers(headers);
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert("grpc-timeout", grpc_timeout(timeout));
    if matches!(message, Message::Gzip(_)) {
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
    }
    headers.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    let call = async {
        let response = channel.call(request).await.map_err(|e| Status::from_error(e.into()))?;
        outcome(response).await
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no answer within {timeout:?}"))))
}

/// `grpc-timeout`: at most 8 digits, in milliseconds or, beyond, seconds.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis();
    let text =
        if millis <= 99_999_999 { format!("{millis}m") } else { format!("{}S", timeout.as_secs().min(99_999_999)) };
    // Digits and a unit are always a valid value; the longest timeout is the fallback.
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// The call's status: in the headers of a trailers-only answer, else in the
/// trailers; without either, what the HTTP status means (gRPC's mapping).
async fn outcome(response: http::Response<tonic::body::Body>) -> Result<(), Status> {
    let (head, mut body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&head.headers) {
        return ok_or(status);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        if let Ok(trailers) = frame.into_trailers() {
            if let Some(status) = Status::from_header_map(&trailers) {
                return ok_or(status);
            }
        }
    }
    let code = match head.status {
        http::StatusCode::BAD_REQUEST => Code::Internal,
        http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Err(Status::new(code, format!("the answer (HTTP {}) carried no grpc-status", head.status)))
}

fn ok_or(status: Status) -> Result<(), Status> {
    if status.code() == Code::Ok {
        Ok(())
    } else {
        Err(status)
    }
}

/// The one message of a unary request, as the frames brought it.
pub(crate) async fn read_message<B>(headers: &HeaderMap, mut body: B) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut reader = MessageReader::new(gzip_encoded(headers)?);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(|e| Status::from_error(e.into()))?.into_data() {
            reader.push(data)?;
        }
    }
    reader.finish()
}

/// Whether the request's `grpc-encoding` is gzip (identity or none: not).
fn gzip_encoded(headers: &HeaderMap) -> Result<bool, Status> {
    match headers.get("grpc-encoding").map(HeaderValue::as_bytes) {
        None | Some(b"identity") => Ok(false),
        Some(b"gzip") => Ok(true),
        Some(other) => {
            let name = String::from_utf8_lossy(other);
            Err(Status::unimplemented(format!("grpc-encoding {name:?} is not supported (gzip is)")))
        }
    }
}

fn gunzip(message: &[u8]) -> Result<Bytes, Status> {
    let mut out = Vec::new();
    let limit = MAX_MESSAGE_BYTES as u64 + 1;
    flate2::read::GzDecoder::new(message)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Status::internal(format!("the message is not valid gzip: {e}")))?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(too_large(out.len()));
    }
    Ok(out.into())
}

fn too_large(len: usize) -> Status {
    Status::resource_exhausted(format!(
        "a message of {len} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes"
    ))
}

/// Gathers one gRPC message from DATA frames: kept as the frames came until
/// the end, then sliced out of the first frame when it holds it all.
#[derive(Default)]
pub struct MessageReader {
    /// The request's `grpc-encoding` is gzip.
    gzip: bool,
    chunks: Vec<Bytes>,
    received: usize,
    /// The message header's flag and length, once 5 bytes arrived.
    head: Option<(bool, usize)>,
}

impl MessageReader {
    pub fn new(gzip: bool) -> MessageReader {
        MessageReader { gzip, ..MessageReader::default() }
    }

    /// Takes the next DATA frame; refuses as soon as the message is known
    /// to be too large or more bytes follow it.
    pub fn push(&mut self, data: Bytes) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(()); // nothing to add; stored, empty frames could pile up without bound
        }
        self.received += data.len();
        self.chunks.push(data);
        if self.head.is_none() && self.received >= 5 {
            let head = self.gather(0, 5);
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if head[0] > 1 {
                return Err(Status::internal(format!("the message header's flag is {}, not 0 or 1", head[0])));
            }
            self.head = Some((head[0] == 1, len));
        }
        match self.head {
            Some((_, len)) if len > MAX_MESSAGE_BYTES => Err(too_large(len)),
            Some((_, len)) if self.received > 5 + len => {
                Err(Status::internal("a unary request carries one message; more bytes followed it"))
            }
            _ => Ok(()),
        }
    }

    /// The message, once the request ended: inflated when flagged compressed.
    pub fn finish(self) -> Result<Bytes, Status> {
        let gzip = self.gzip;
        match self.framed()? {
            (false, message) => Ok(message),
            (true, message) if gzip => gunzip(&message),
            (true, _) => {
                Err(Status::internal("the message is flagged compressed but the request names no grpc-encoding"))
            }
        }
    }

    fn framed(mut self) -> Result<(bool, Bytes), Status> {
        let Some((compressed, len)) = self.head else {
            return Err(Status::internal("the request carries no message"));
        };
        if self.received < 5 + len {
            return Err(Status::internal(format!(
                "the request ended {} bytes into a message of {len} bytes",
                self.received - 5
            )));
        }
        if self.chunks[0].len() >= 5 + len {
            return Ok((compressed, self.chunks.swap_remove(0).slice(5..5 + len)));
        }
        Ok((compressed, self.gather(5, len).into()))
    }

    /// `len` of the received bytes from offset `from` (fewer if fewer came).
    fn gather(&self, from: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut skip = from;
        for chunk in &self.chunks {
            let start = skip.min(chunk.len());
            skip -= start;
            let take = (chunk.len() - start).min(len - out.len());
            out.extend_from_slice(&chunk[start..start + take]);
            if out.len() == len {
                break;
            }
        }
        out
    }
}

/// The answer to a unary request: an empty message and `grpc-status: 0`,
/// or the refusal as a trailers-only answer.
pub(crate) fn answer(result: Result<(), Status>) -> http::Response<tonic::body::Body> {
    match result {
        Ok(()) => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
            let frames = Frames([Frame::data(empty), Frame::trailers(trailers)].into());
            let mut response = http::Response::new(tonic::body::Body::new(frames));
            grpc_headers(response.headers_mut());
            response
        }
        Err(status) => status.into_http(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// `bytes` cut into DATA frames at `cuts`.
    fn body(bytes: &[u8], cuts: &[usize]) -> Frames {
        let mut frames = VecDeque::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            frames.push_back(Frame::data(Bytes::copy_from_slice(&bytes[at..cut])));
            at = cut;
        }
        Frames(frames)
    }

    async fn read(headers: &[(&'static str, &'static str)], bytes: &[u8], cuts: &[usize]) -> Result<Bytes, Status> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        read_message(&map, body(bytes, cuts)).await
    }

    #[tokio::test]
    async fn a_message_in_one_frame_is_taken_without_a_copy() {
        let wire = Bytes::from(framed(0, b"spans"));
        let mut frames = VecDeque::new();
        frames.push_back(Frame::data(wire.clone()));
        let message = read_message(&HeaderMap::new(), Frames(frames)).await.expect("read");
        assert_eq!(&message[..], b"spans");
        assert_eq!(message.as_ptr(), wire[5..].as_ptr(), "a slice of the frame, not a copy");
    }

    #[tokio::test]
    async fn a_message_cut_anywhere_reads_the_same() {
        let message: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let wire = framed(0, &message);
        for cuts in [&[1][..], &[3, 4], &[5], &[6, 500, 999], &[2, 3, 4, 5, 6, 7]] {
            assert_eq!(&read(&[], &wire, cuts).await.expect("read")[..], &message[..], "cut at {cuts:?}");
        }
    }

    #[tokio::test]
    async fn broken_requests_are_refused_with_why() {
        type Case = (&'static [(&'static str, &'static str)], Vec<u8>, Code, &'static str);
        let cases: [Case; 6] = [
            (&[], vec![], Code::Internal, "no message"),
            (&[], framed(0, b"abc")[..6].to_vec(), Code::Internal, "ended 1 bytes into a message of 3 bytes"),
            (&[], [framed(0, b"a"), framed(0, b"b")].concat(), Code::Internal, "one message"),
            (&[], framed(2, b"a"), Code::Internal, "flag is 2"),
            (&[], framed(1, b"a"), Code::Internal, "names no grpc-encoding"),
            (&[("grpc-encoding", "zstd")], framed(0, b"a"), Code::Unimplemented, "\"zstd\" is not supported"),
        ];
        for (headers, wire, code, why) in cases {
            let status = read(headers, &wire, &[]).await.expect_err(why);
            assert_eq!((status.code(), status.message().contains(why)), (code, true), "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_before_it_is_read() {
        let mut head = vec![0u8];
        head.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        let status = read(&[], &head, &[]).await.expect_err("too large");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }

    #[tokio::test]
    async fn gzip_messages_are_inflated_within_the_limit() {
        let packed = gzip(&[Bytes::from_static(b"hello "), Bytes::from_static(b"spans")]).expect("gzip");
        let read_back = read(&[("grpc-encoding", "gzip")], &framed(1, &packed), &[]).await.expect("read");
        assert_eq!(&read_back[..], b"hello spans");
        let bomb = gzip(&[Bytes::from(vec![0u8; MAX_MESSAGE_BYTES + 1])]).expect("gzip");
        let status = read(&[("grpc-encoding", "gzip")], &framed(1, &bomb), &[]).await.expect_err("bomb");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let status = read(&[("grpc-encoding", "gzip")], &framed(1, b"not gzip"), &[]).await.expect_err("bad");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }

    #[tokio::test]
    async fn parts_go_out_as_they_are_behind_one_header() {
        let parts = [Bytes::from_static(b"ab"), Bytes::from_static(b"cde")];
        let frames: Vec<Bytes> =
            Message::Plain(&parts).frames().expect("frames").into_iter().filter_map(|f| f.into_data().ok()).collect();
        assert_eq!(frames, [&[0u8, 0, 0, 0, 5][..], b"ab", b"cde"]);
        assert_eq!(frames[1].as_ptr(), parts[0].as_ptr(), "the part itself, not a copy");
        let gz: Vec<Bytes> =
            Message::Gzip(&parts).frames().expect("frames").into_iter().filter_map(|f| f.into_data().ok()).collect();
        assert_eq!(gz[0][0], 1, "flagged compressed");
        let message = read(&[("grpc-encoding", "gzip")], &gz.concat(), &[]).await.expect("read");
        assert_eq!(&message[..], b"abcde");
    }

    fn response(
        status: http::StatusCode,
        headers: &[(&'static str, &'static str)],
        trailers: Option<&str>,
    ) -> http::Response<tonic::body::Body> {
        let mut frames = VecDeque::from([Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))]);
        if let Some(code) = trailers {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", HeaderValue::from_str(code).expect("digits"));
            map.insert("grpc-message", HeaderValue::from_static("told%20so"));
            frames.push_back(Frame::trailers(map));
        }
        let mut r = http::Response::new(tonic::body::Body::new(Frames(frames)));
        *r.status_mut() = status;
        for (k, v) in headers {
            r.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        r
    }

    #[tokio::test]
    async fn the_answer_is_read_from_headers_trailers_or_the_http_status() {
        use http::StatusCode as S;
        assert!(outcome(response(S::OK, &[], Some("0"))).await.is_ok());
        let refused = outcome(response(S::OK, &[], Some("8"))).await.expect_err("refused");
        assert_eq!((refused.code(), refused.message()), (Code::ResourceExhausted, "told so"));
        let trailers_only = outcome(response(S::OK, &[("grpc-status", "16")], None)).await.expect_err("only");
        assert_eq!(trailers_only.code(), Code::Unauthenticated);
        assert_eq!(
            outcome(response(S::SERVICE_UNAVAILABLE, &[], None)).await.expect_err("503").code(),
            Code::Unavailable
        );
        assert_eq!(outcome(response(S::OK, &[], None)).await.expect_err("no status").code(), Code::Unknown);
    }

    #[test]
    fn timeouts_fit_in_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_millis(500)), "500m");
        assert_eq!(grpc_timeout(Duration::from_secs(10)), "10000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[tokio::test]
    async fn the_answer_to_an_export_is_an_empty_message_then_status_zero() {
        let (head, mut body) = answer(Ok(())).into_parts();
        assert_eq!(head.headers["content-type"], "application/grpc");
        let data = body.frame().await.expect("frame").expect("ok").into_data().expect("data");
        assert_eq!(&data[..], &[0, 0, 0, 0, 0]);
        let trailers = body.frame().await.expect("frame").expect("ok").into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        let refused = answer(Err(Status::resource_exhausted("full"))).into_parts().0;
        assert_eq!(refused.headers["grpc-status"], "8", "a trailers-only refusal");
    }
}
