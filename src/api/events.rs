//! Answers of live events (`Accept: application/x-ndjson`): a body that reads the events of
//! one run or of a batch's runs, each from its own cursor, and sends every read as its own
//! frame at once, so nothing waits for a buffer to fill. It never buffers more than the
//! lines of one read per run: a slow client leaves the lines in the journal (which spills to
//! disk), and a client that goes away drops its cursors, never the runs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::ApiBody;
use crate::tasks::journal::{Journal, Reader, MEDIA_TYPE};

type Next = Pin<Box<dyn Future<Output = (Reader, Option<Bytes>)> + Send>>;

/// The events of one or more runs, merged line by line in the order they come.
pub struct EventBody {
    /// One pending read per run, in the request's order; None once that run's events ended.
    reads: Vec<Option<Next>>,
    /// Runs still going.
    left: usize,
    /// Where the next poll starts: each run in turn, so a chatty one does not hold back the
    /// others, and the first lines (each run's `task`) come in the request's order.
    turn: usize,
    /// The run whose line was cut by a read (a long one): only it is read until that line
    /// ends, so runs of a batch interleave between lines, never inside one.
    cut: Option<usize>,
}

fn next(mut reader: Reader) -> Next {
    Box::pin(async move {
        let lines = reader.next().await;
        (reader, lines)
    })
}

impl EventBody {
    pub fn new(journals: &[Arc<Journal>]) -> EventBody {
        EventBody {
            reads: journals.iter().map(|j| Some(next(j.reader()))).collect(),
            left: journals.len(),
            turn: 0,
            cut: None,
        }
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let n = self.reads.len();
        let was_cut = self.cut.is_some();
        let order: Vec<usize> = match self.cut {
            Some(i) => vec![i],
            None => (0..n).map(|k| (self.turn + k) % n).collect(),
        };
        for i in order {
            let Some(read) = self.reads[i].as_mut() else {
                continue;
            };
            match read.as_mut().poll(cx) {
                Poll::Pending => {}
                Poll::Ready((_, None)) => {
                    self.cut = None;
                    self.reads[i] = None;
                    self.left -= 1;
                }
                Poll::Ready((reader, Some(bytes))) => {
                    self.cut = (!reader.at_line_end()).then_some(i);
                    self.turn = (i + 1) % n;
                    self.reads[i] = Some(next(reader));
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
            }
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if was_cut && self.cut.is_none() {
            // The run whose line was cut ended (its file failed) and only it was polled:
            // the others must be polled again to be woken.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// Whether the client asked for live events.
pub fn wanted<B>(req: &Request<B>) -> bool {
    req.headers().get_all(ACCEPT).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|m| {
            let essence = m.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case(MEDIA_TYPE)
        })
    })
}

/// An answer of live events.
pub fn answer(status: StatusCode, journals: &[Arc<Journal>]) -> Response<ApiBody> {
    with_type(status, super::ApiBody::Events(EventBody::new(journals)))
}

/// An answer of events known whole (a run that has ended).
pub fn whole(lines: Vec<u8>) -> Response<ApiBody> {
    with_type(StatusCode::OK, super::ApiBody::bytes(lines))
}

fn with_type(status: StatusCode, body: ApiBody) -> Response<ApiBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    // Proxies that buffer answers (nginx) would hold the lines back.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}
