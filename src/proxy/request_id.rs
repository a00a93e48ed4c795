//! Request ids: a per-process random prefix and a counter, cheap enough for every call
//! (no syscall, unlike a random UUID per request).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-sidetrace-request-id");

#[derive(Clone)]
pub struct MakeCallId {
    prefix: u32,
    next: Arc<AtomicU64>,
}

impl Default for MakeCallId {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS once per process: enough to tell replicas apart.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        MakeCallId {
            prefix: h.finish() as u32,
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for MakeCallId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}{:012x}", self.prefix, n);
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}
