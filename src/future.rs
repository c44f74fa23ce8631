//! [`ResponseFuture`]: one request through the cache, as a state machine.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, request};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::StreamingBody;
use crate::cache::{Finished, Pending, Plan};
use crate::error::BoxError;
use crate::storage::BoxFuture;

pin_project! {
    /// The future of [`HttpCacheStreaming`](crate::HttpCacheStreaming): a lookup in the
    /// store, then perhaps the inner service, then perhaps a store update.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S::Future, S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, ReqB> {
        /// Looking the request up; the inner service and the body wait.
        Lookup {
            lookup: BoxFuture<'static, (Plan, request::Parts)>,
            service: Option<S>,
            body: Option<ReqB>,
        },
        /// The inner service answers.
        Inner {
            #[pin]
            future: F,
            pending: Option<Pending>,
            again: Option<Call<S, ReqB>>,
        },
        /// The request goes to the inner service once it is ready (the first time, or
        /// again, unconditionally, when a revalidation's 304 selected nothing).
        Calling {
            call: Option<Call<S, ReqB>>,
            pending: Option<Pending>,
            again: Option<Call<S, ReqB>>,
        },
        /// The cache finishes with the inner answer (a revalidation, an invalidation).
        Finish {
            future: BoxFuture<'static, Response<StreamingBody>>,
        },
        /// Answered from memory when the request arrived.
        Ready {
            response: Option<Response<StreamingBody>>,
        },
        Done,
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    pub(crate) fn lookup(
        lookup: BoxFuture<'static, (Plan, request::Parts)>,
        service: S,
        body: ReqB,
    ) -> Self {
        ResponseFuture {
            state: State::Lookup {
                lookup,
                service: Some(service),
                body: Some(body),
            },
        }
    }

    pub(crate) fn ready(response: Response<StreamingBody>) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn forwarded(service: S, request: Request<ReqB>, pending: Pending) -> Self {
        ResponseFuture {
            state: State::Calling {
                call: Some(Call { service, request }),
                pending: Some(pending),
                again: None,
            },
        }
    }
}

impl<S, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Lookup { .. } => "looking up",
            State::Inner { .. } => "waiting for the inner service",
            State::Calling { .. } => "waiting for the inner service to be ready",
            State::Finish { .. } => "finishing",
            State::Ready { .. } => "answered",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// A request for the inner service, and the service to send it with once it is ready; for
/// the request sent again if a revalidation's `304` selects nothing, a clone of the service
/// and the request as the client sent it, with an empty body made anew.
struct Call<S, ReqB> {
    service: S,
    request: Request<ReqB>,
}

impl<S: Clone, ReqB: 'static> Call<S, ReqB> {
    /// Kept for a revalidation, when the request's body type can be made anew.
    fn prepare(service: &S, parts: &request::Parts, revalidates: bool) -> Option<Self> {
        if !revalidates {
            return None;
        }
        let body = crate::empty_body::empty::<ReqB>()?;
        Some(Call {
            service: service.clone(),
            request: Request::from_parts(parts.clone(), body),
        })
    }
}

/// Replaces a request's validators with those of a revalidation (or its `Range` and
/// `If-Range` with those of a partial entry's fetch): each header named replaces the
/// client's.
fn apply_validators(parts: &mut request::Parts, conditional: Option<http::HeaderMap>) {
    if let Some(validators) = conditional {
        parts.headers.remove(http::header::IF_NONE_MATCH);
        parts.headers.remove(http::header::IF_MODIFIED_SINCE);
        for name in validators.keys() {
            parts.headers.remove(name);
        }
        for (name, value) in &validators {
            parts.headers.append(name.clone(), value.clone());
        }
    }
}

/// Calls the inner service once it is ready and stores what it answers, reading the body
/// to its end since no client does.
async fn revalidate_in_background<S, ReqB, ResB>(
    mut service: S,
    request: Request<ReqB>,
    pending: Pending,
    again: Option<Call<S, ReqB>>,
) where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    use http_body_util::BodyExt as _;
    if std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .is_err()
    {
        return;
    }
    let Ok(answer) = service.call(request).await else {
        return; // the stale entry stays; the next request tries again
    };
    let response = match pending.finish(answer) {
        Finished::Ready(response) => response,
        Finished::Later(future) => future.await,
        Finished::Again(pending) => {
            let Some(Call {
                mut service,
                request,
            }) = again
            else {
                return;
            };
            if std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .is_err()
            {
                return;
            }
            let Ok(answer) = service.call(request).await else {
                return;
            };
            match pending.finish(answer) {
                Finished::Ready(response) => response,
                Finished::Later(future) => future.await,
                Finished::Again(pending) => pending.not_selected(),
            }
        }
    };
    let mut body = std::pin::pin!(response.into_body());
    while let Some(Ok(_)) = body.frame().await {}
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<StreamingBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Lookup {
                    lookup,
                    service,
                    body,
                } => {
                    let (plan, mut parts) = ready!(lookup.as_mut().poll(cx));
                    match plan {
                        Plan::Respond(response) => {
                            state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                        Plan::Forward {
                            conditional,
                            pending,
                        } => {
                            if pending.fetches_whole() {
                                parts.headers.remove(http::header::RANGE);
                                parts.headers.remove(http::header::IF_RANGE);
                            }
                            let (Some(service), Some(body)) = (service.take(), body.take()) else {
                                panic!("ResponseFuture polled after completion");
                            };
                            let again = Call::prepare(&service, &parts, pending.revalidates());
                            apply_validators(&mut parts, conditional);
                            let request = Request::from_parts(parts, body);
                            state.set(State::Calling {
                                call: Some(Call { service, request }),
                                pending: Some(pending),
                                again,
                            });
                        }
                        Plan::Background {
                            response,
                            conditional,
                            pending,
                        } => {
                            if let (Some(service), Some(body), Ok(runtime)) = (
                                service.take(),
                                body.take(),
                                tokio::runtime::Handle::try_current(),
                            ) {
                                let again = Call::prepare(&service, &parts, pending.revalidates());
                                apply_validators(&mut parts, conditional);
                                let request = Request::from_parts(parts, body);
                                runtime.spawn(revalidate_in_background(
                                    service, request, pending, again,
                                ));
                            }
                            state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProj::Inner {
                    future,
                    pending,
                    again,
                } => {
                    let result = ready!(future.poll(cx));
                    let Some(pending) = pending.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    match result {
                        Ok(response) => match pending.finish(response) {
                            Finished::Ready(response) => {
                                state.set(State::Done);
                                return Poll::Ready(Ok(response));
                            }
                            Finished::Later(future) => state.set(State::Finish { future }),
                            Finished::Again(pending) => match again.take() {
                                Some(again) => state.set(State::Calling {
                                    call: Some(again),
                                    pending: Some(pending),
                                    again: None,
                                }),
                                None => {
                                    state.set(State::Done);
                                    return Poll::Ready(Ok(pending.not_selected()));
                                }
                            },
                        },
                        Err(error) => {
                            state.set(State::Done);
                            return Poll::Ready(pending.on_error(error));
                        }
                    }
                }
                StateProj::Calling {
                    call,
                    pending,
                    again,
                } => {
                    let Some(Call { service, .. }) = call.as_mut() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let ready = ready!(service.poll_ready(cx));
                    let (
                        Some(Call {
                            mut service,
                            request,
                        }),
                        Some(pending),
                    ) = (call.take(), pending.take())
                    else {
                        panic!("ResponseFuture polled after completion");
                    };
                    if let Err(error) = ready {
                        state.set(State::Done);
                        return Poll::Ready(pending.on_error(error));
                    }
                    let future = service.call(request);
                    let again = again.take();
                    state.set(State::Inner {
                        future,
                        pending: Some(pending),
                        again,
                    });
                }
                StateProj::Finish { future } => {
                    let response = ready!(future.as_mut().poll(cx));
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Ready { response } => {
                    let Some(response) = response.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
