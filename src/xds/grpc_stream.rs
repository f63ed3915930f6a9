//! A bidirectional gRPC stream on tonic's channel, with our own framing of
//! the messages that come in.
//!
//! Why not tonic's `Streaming`: its decoder keeps one receive buffer and
//! grows it to the largest message seen. A control plane's first response is
//! the whole mesh (140 MB at 50,000 services × 10 endpoints), so that much
//! stayed resident for the life of the stream. Here every message gets a
//! buffer of exactly its size, dropped once decoded.
//!
//! gRPC framing (both ways): a 1-byte compressed flag, a 4-byte big-endian
//! length, the protobuf message. The status comes in the trailers, or in the
//! headers of a response that fails at once ("trailers-only").

use std::collections::VecDeque;
use std::marker::PhantomData;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, StreamBody};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower_service::Service;

const HEADER_LEN: usize = 5;

/// Opens the stream: `path` is `/package.Service/Method`, `request` carries
/// the metadata (headers) and the outgoing messages.
pub async fn open<Out, In, S>(
    channel: &mut Channel,
    path: &'static str,
    request: tonic::Request<S>,
    max_message_bytes: usize,
) -> Result<MessageStream<In>, Status>
where
    Out: prost::Message + 'static,
    In: prost::Message + Default,
    S: Stream<Item = Out> + Send + 'static,
{
    let (metadata, _, outgoing) = request.into_parts();
    let frames = outgoing.map(|m| Ok::<_, Status>(http_body::Frame::data(encode(&m))));
    let mut http_request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(StreamBody::new(frames)))
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    http_request.headers_mut().extend(metadata.into_headers());

    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let response = channel
        .call(http_request)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::new(
            Code::Unavailable,
            format!("HTTP status {} from the control plane", response.status()),
        ));
    }
    // A trailers-only response: the call failed before any message.
    check_status(response.headers())?;
    Ok(MessageStream {
        body: response.into_body(),
        reader: FrameReader::new(max_message_bytes),
        ended: false,
        _message: PhantomData,
    })
}

fn encode(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.push(0); // not compressed
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // A Vec grows as needed, so the infallible raw encoding is enough.
    message.encode_raw(&mut out);
    out.into()
}

/// `grpc-status` in a header map: `Ok` when absent or OK.
fn check_status(headers: &http::HeaderMap) -> Result<(), Status> {
    match Status::from_header_map(headers) {
        Some(status) if status.code() != Code::Ok => Err(status),
        _ => Ok(()),
    }
}

/// The incoming messages of one stream.
pub struct MessageStream<M> {
    body: tonic::body::Body,
    reader: FrameReader,
    ended: bool,
    _message: PhantomData<M>,
}

impl<M: prost::Message + Default> MessageStream<M> {
    /// The next message; `None` once the server ended the stream with OK.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(bytes) = self.reader.next_message()? {
                return M::decode(bytes.as_slice())
                    .map(Some)
                    .map_err(|e| Status::internal(format!("decoding a message: {e}")));
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    if !self.reader.is_idle() {
                        return Err(Status::internal("the stream ended inside a message"));
                    }
                    // No trailers at all: not a clean gRPC end.
                    return Err(Status::unavailable("the stream ended without a status"));
                }
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.reader.push(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.ended = true;
                            check_status(&trailers)?;
                            if !self.reader.is_idle() {
                                return Err(Status::internal("the stream ended inside a message"));
                            }
                        }
                    }
                },
            }
        }
    }
}

/// Splits received bytes into messages, each in a buffer of its own size.
#[derive(Debug)]
struct FrameReader {
    chunks: VecDeque<Bytes>,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// The message being filled (capacity = its length), once its header is in.
    message: Option<(Vec<u8>, usize)>,
    max_message_bytes: usize,
}

impl FrameReader {
    fn new(max_message_bytes: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            header: [0; HEADER_LEN],
            header_filled: 0,
            message: None,
            max_message_bytes,
        }
    }

    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.chunks.push_back(data);
        }
    }

    /// True between messages with nothing buffered.
    fn is_idle(&self) -> bool {
        self.chunks.is_empty() && self.header_filled == 0 && self.message.is_none()
    }

    /// The next complete message, if the bytes so far hold one.
    fn next_message(&mut self) -> Result<Option<Vec<u8>>, Status> {
        if self.message.is_none() {
            while self.header_filled < HEADER_LEN {
                let Some(chunk) = self.chunks.front_mut() else {
                    return Ok(None);
                };
                let take = (HEADER_LEN - self.header_filled).min(chunk.len());
                chunk
                    .copy_to_slice(&mut self.header[self.header_filled..self.header_filled + take]);
                self.header_filled += take;
                if chunk.is_empty() {
                    self.chunks.pop_front();
                }
            }
            if self.header[0] != 0 {
                // We never offer an encoding, so a compressed message is a
                // protocol error by the server.
                return Err(Status::internal(
                    "received a compressed message, but no compression was offered",
                ));
            }
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            if len > self.max_message_bytes {
                return Err(Status::out_of_range(format!(
                    "a message of {len} bytes is over the limit of {} bytes",
                    self.max_message_bytes
                )));
            }
            self.header_filled = 0;
            self.message = Some((Vec::with_capacity(len), len));
        }
        let Some((buf, len)) = self.message.as_mut() else {
            return Ok(None);
        };
        while buf.len() < *len {
            let Some(chunk) = self.chunks.front_mut() else {
                return Ok(None);
            };
            let take = (*len - buf.len()).min(chunk.len());
            buf.extend_from_slice(&chunk[..take]);
            chunk.advance(take);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
        Ok(self.message.take().map(|(buf, _)| buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn messages_split_anywhere_across_chunks_come_out_whole_and_exactly_sized() {
        let stream: Vec<u8> = [framed(b"first"), framed(b""), framed(&[7u8; 1000])].concat();
        // Every split size, including 1-byte chunks that cut the headers.
        for chunk_len in [1, 2, 3, 5, 6, 17, 1000, stream.len()] {
            let mut reader = FrameReader::new(4096);
            let mut out = Vec::new();
            for chunk in stream.chunks(chunk_len) {
                reader.push(Bytes::copy_from_slice(chunk));
                while let Some(message) = reader.next_message().unwrap() {
                    assert_eq!(message.capacity(), message.len(), "exact-size buffer");
                    out.push(message);
                }
            }
            assert_eq!(
                out,
                vec![b"first".to_vec(), vec![], vec![7u8; 1000]],
                "chunks of {chunk_len}"
            );
            assert!(reader.is_idle());
        }
    }

    #[test]
    fn an_incomplete_message_waits_for_more_bytes() {
        let mut reader = FrameReader::new(4096);
        let whole = framed(b"hello");
        reader.push(Bytes::copy_from_slice(&whole[..7]));
        assert_eq!(reader.next_message().unwrap(), None);
        assert!(!reader.is_idle());
        reader.push(Bytes::copy_from_slice(&whole[7..]));
        assert_eq!(reader.next_message().unwrap(), Some(b"hello".to_vec()));
    }

    #[test]
    fn oversized_and_compressed_messages_are_refused() {
        let mut reader = FrameReader::new(4);
        reader.push(Bytes::from(framed(b"12345")));
        let e = reader.next_message().unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e}");

        let mut reader = FrameReader::new(4096);
        let mut compressed = framed(b"x");
        compressed[0] = 1;
        reader.push(Bytes::from(compressed));
        let e = reader.next_message().unwrap_err();
        assert!(e.message().contains("compressed"), "{e}");
    }
}
