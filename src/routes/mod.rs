//! Request handlers, one module per kind of route. They talk to [`crate::amqp`] through its
//! own types and never see lapin.

mod body;
mod encode;
pub(crate) mod invalidate;
mod json;
mod path;
pub(crate) mod publish;
pub(crate) mod read;
