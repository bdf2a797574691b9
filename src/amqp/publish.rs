//! One confirmed publish: properties, `mandatory`, and reading the confirm.

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};

use super::{APP_ID, Event, PROPERTIES_BUDGET_BYTES, PublishError};

/// Persistent delivery mode: the broker writes the message to disk before confirming it.
const PERSISTENT: u8 = 2;

fn short(s: &str, what: &'static str) -> Result<ShortString, PublishError> {
    ShortString::try_new(s).map_err(|_| PublishError::Internal(what))
}

/// Builds the AMQP properties for `event`, checking the size budget first.
pub(super) fn properties(event: &Event<'_>) -> Result<BasicProperties, PublishError> {
    let size: usize = [
        event.message_id.len(),
        event.correlation_id.map_or(0, str::len),
        event.content_type.map_or(0, str::len),
        event.message_type.len(),
        APP_ID.len(),
    ]
    .iter()
    .sum::<usize>()
        + event
            .headers
            .iter()
            // 1 length byte + key, 1 type byte + 4 length bytes + value.
            .map(|(k, v)| 6 + k.len() + v.len())
            .sum::<usize>();
    if size > PROPERTIES_BUDGET_BYTES {
        return Err(PublishError::PropertiesTooLarge);
    }
    let mut headers = FieldTable::default();
    for (k, v) in &event.headers {
        headers.insert(
            short(k, "header name too long")?,
            AMQPValue::LongString(LongString::from(*v)),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short(event.message_id, "message id too long")?)
        .with_timestamp(event.timestamp)
        .with_type(short(event.message_type, "message type too long")?)
        .with_app_id(short(APP_ID, "app id")?)
        .with_headers(headers);
    if let Some(ct) = event.content_type {
        props = props.with_content_type(short(ct, "content type too long")?);
    }
    if let Some(id) = event.correlation_id {
        props = props.with_correlation_id(short(id, "correlation id too long")?);
    }
    if let Some(p) = event.priority {
        props = props.with_priority(p);
    }
    Ok(props)
}

/// Publishes on `channel` and waits for the confirm (the caller bounds the wait).
///
/// `Ok` only for an `Ack` with no returned message: with `mandatory`, an unroutable message
/// comes back as `basic.return` followed by an `Ack`, which lapin folds into `Ack(Some(_))`.
pub(super) async fn publish_on(
    channel: &Channel,
    event: &Event<'_>,
    props: BasicProperties,
) -> Result<(), PublishError> {
    if !channel.status().confirm() {
        // Without confirm mode we could never honestly answer 2xx.
        return Err(PublishError::Internal("channel not in confirm mode"));
    }
    let exchange = short(event.exchange, "exchange name too long")?;
    let routing_key = short(event.routing_key, "routing key too long")?;
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(exchange, routing_key, options, event.body, props)
        .await
        .map_err(|e| match e.kind() {
            // Refused before any frame was queued: nothing reached the broker.
            lapin::ErrorKind::InvalidChannelState(..)
            | lapin::ErrorKind::InvalidConnectionState(..) => PublishError::Unavailable,
            _ => {
                tracing::warn!(error = %e, "Publish failed while sending.");
                PublishError::Unknown("the channel failed while sending")
            }
        })?;
    match confirm.await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable),
        Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
        Ok(Confirmation::NotRequested) => Err(PublishError::Internal("confirm not requested")),
        Err(e) => {
            tracing::warn!(error = %e, "Channel failed before the confirm arrived.");
            Err(PublishError::Unknown(
                "the channel failed before the confirm",
            ))
        }
    }
}
