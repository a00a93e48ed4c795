//! The request path: one tower stack (see `stack.rs`) from the client connection to the upstream.

pub mod body;
pub mod budget;
pub mod context;
pub mod inspect;
pub mod keys;
pub mod limit;
pub mod record;
pub mod reply;
pub mod request_id;
pub mod rescue;
pub mod rewrite;
pub mod route;
pub mod shed;
pub mod sign;
pub mod stack;
pub mod tap;
pub mod timeouts;
pub mod upstream;

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
