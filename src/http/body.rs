//! The response body of [`HttpCache`](super::HttpCache): a buffered (cached) body, or the inner
//! service's own body for requests the cache does not touch.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::error::BoxError;

/// The body of a response from [`HttpCache`](super::HttpCache).
#[derive(Debug)]
pub struct HttpCacheBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    Full(Full<Bytes>),
    Inner(B),
}

impl<B> HttpCacheBody<B> {
    pub(crate) fn full(bytes: Bytes) -> Self {
        HttpCacheBody {
            kind: Kind::Full(Full::new(bytes)),
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        HttpCacheBody {
            kind: Kind::Inner(body),
        }
    }
}

impl<B> Body for HttpCacheBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
            Kind::Inner(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|f| {
                    f.map(|f| f.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                        .map_err(Into::into)
                })
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(full) => full.is_end_stream(),
            Kind::Inner(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(full) => full.size_hint(),
            Kind::Inner(body) => body.size_hint(),
        }
    }
}
