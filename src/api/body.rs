//! The body of every answer: bytes built in memory, a result kept in the state directory, a
//! run's live events, or a path streamed out of a task's container.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame, SizeHint};

use crate::state::FileBody;
use crate::tasks::collect::PathBody;

use super::events::EventBody;

/// One answer's body; every kind but `Bytes` streams, so no answer is held whole in memory
/// unless it was built there.
pub enum ApiBody {
    Bytes(Full<Bytes>),
    Kept(FileBody),
    Events(EventBody),
    Path(PathBody),
}

impl ApiBody {
    pub fn bytes(bytes: impl Into<Bytes>) -> ApiBody {
        ApiBody::Bytes(Full::new(bytes.into()))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ApiBody::Bytes(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never| match never {}))),
            ApiBody::Kept(b) => Pin::new(b).poll_frame(cx),
            ApiBody::Events(b) => Pin::new(b).poll_frame(cx),
            ApiBody::Path(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ApiBody::Bytes(b) => b.is_end_stream(),
            ApiBody::Kept(b) => b.is_end_stream(),
            ApiBody::Events(b) => b.is_end_stream(),
            ApiBody::Path(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Bytes(b) => b.size_hint(),
            ApiBody::Kept(b) => b.size_hint(),
            ApiBody::Events(b) => b.size_hint(),
            ApiBody::Path(b) => b.size_hint(),
        }
    }
}
