//! Telling admins what happened on the pair link: every event goes to the
//! log (by the driver) and, when the shared configuration has a `[notify]`
//! section, by mail and/or webhook with the pipeline's delivery code. The
//! sending runs on the server's main runtime, never on the pair thread, so
//! a slow mail server cannot delay a heartbeat.

use crate::core::Core;

/// Sends one notice for a pair event, if notifications are configured.
pub fn send(core: &Core, event: &'static str, text: String) {
    let Some(notifier) = core.config.current().and_then(|c| c.notifier.clone()) else {
        return;
    };
    let Some(handle) = core.main_runtime() else {
        return;
    };
    let instance = core.name().to_owned();
    let at = core.clock.now();
    let notice = plugins::notify::Notice {
        id: format!("{instance}-{event}-{}", at.timestamp_millis()),
        subject: format!("[scan gateway] {text}"),
        text,
        event: event.to_owned(),
        fields: serde_json::Map::from_iter([
            ("instance".to_owned(), serde_json::Value::from(instance)),
            (
                "at".to_owned(),
                serde_json::Value::from(crate::store::time_text(at)),
            ),
        ]),
    };
    handle.spawn(async move {
        let report = notifier.send(&notice).await;
        for (channel, outcome) in report.channels() {
            if outcome.is_delivered() {
                tracing::info!(channel, event = notice.event, "admins notified");
            } else {
                tracing::warn!(channel, event = notice.event, outcome = %outcome, "admins could not be notified");
            }
        }
    });
}
