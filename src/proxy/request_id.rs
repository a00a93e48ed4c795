//! Request ids: a per-process random prefix and a counter, cheap enough for every call
//! (no syscall, unlike a random UUID per request).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::trace::context::push_hex;

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

/// The prefix as 8 hex digits, then the counter as at least 12 (what `{:08x}{:012x}` writes,
/// without `format!`'s cost on every call).
fn call_id(prefix: u32, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    push_hex(&mut out, &prefix.to_be_bytes());
    // All 16 digits of the counter, then its leading zeros past the 12 dropped.
    push_hex(&mut out, &n.to_be_bytes());
    let zeros = out[8..12].iter().take_while(|&&d| d == b'0').count();
    out.drain(8..8 + zeros);
    out
}

impl MakeRequestId for MakeCallId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_bytes(&call_id(self.prefix, n))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_written_as_the_format_string_would() {
        let counters = [
            0,
            1,
            0xabc,
            0xffff_ffff_ffff,
            0x1_0000_0000_0000,
            0x12_3456_789a_bcde,
            u64::MAX,
        ];
        for prefix in [0, 7, 0xdead_beef, u32::MAX] {
            for n in counters.into_iter().chain((0..64).map(|i| 1u64 << i)) {
                assert_eq!(
                    String::from_utf8(call_id(prefix, n)).unwrap(),
                    format!("{prefix:08x}{n:012x}"),
                    "prefix {prefix:x}, n {n:x}"
                );
            }
        }
    }
}
