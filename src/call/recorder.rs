//! The recorder: where a finished call goes. It prices the call, puts the captured output in
//! its content, builds its span, hands call and span to every sink in order (metrics, the cost
//! store, budgets, ...), then the span to the trace store and the export, which own their
//! copies from there (the store's with its own content; one copy when only one of them is on).

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Instant, SystemTime},
};

use crate::{
    call::{
        record::CallRecord,
        sink::Sink,
        tools::{ToolSpan, ToolTable},
    },
    cost::PriceBookCell,
    export::pipeline::ExportHandle,
    format::request::ToolResult,
    store::traces::{Origin, StoreSink},
    trace::{
        capture::Capturer,
        metadata::CaptureLevel,
        span::{SpanRecord, span_for},
    },
};

/// What a recorder is built from.
pub struct RecorderParts {
    pub prices: Arc<PriceBookCell>,
    /// Price calls (`cost.enabled`).
    pub pricing: bool,
    pub capturer: Arc<Capturer>,
    /// In the order they get each call.
    pub sinks: Vec<Arc<dyn Sink>>,
    /// The span's last stop: the OTLP export (and its tail sampler), when configured.
    pub export: Option<ExportHandle>,
    /// The trace store: it gets each call's span after the sinks, and the spans that are not
    /// a call's own (see [`Recorder::record_span`]).
    pub store: Option<Arc<StoreSink>>,
    /// Tool calls awaiting their results (`[trace] tool_spans`); `None` turns tool spans and
    /// agent-loop joining off.
    pub tools: Option<Arc<ToolTable>>,
}

pub struct Recorder {
    prices: Arc<PriceBookCell>,
    pricing: bool,
    capturer: Arc<Capturer>,
    sinks: Vec<Arc<dyn Sink>>,
    export: Option<ExportHandle>,
    store: Option<Arc<StoreSink>>,
    tools: Option<Arc<ToolTable>>,
    /// Shutdown's grace is over and open calls are being cut.
    cutting: AtomicBool,
}

impl Recorder {
    pub fn new(parts: RecorderParts) -> Recorder {
        let RecorderParts {
            prices,
            pricing,
            capturer,
            sinks,
            export,
            store,
            tools,
        } = parts;
        Recorder {
            prices,
            pricing,
            capturer,
            sinks,
            export,
            store,
            tools,
            cutting: AtomicBool::new(false),
        }
    }

    /// Marks that shutdown is cutting the calls still open: they end as `error.type=shutdown`
    /// rather than `cancelled`, and nothing is left to read in the background.
    pub fn begin_cut(&self) {
        self.cutting.store(true, Ordering::Release);
    }

    /// Whether shutdown is cutting open calls (see [`Recorder::begin_cut`]).
    pub fn cutting(&self) -> bool {
        self.cutting.load(Ordering::Acquire)
    }

    /// Prices a finished call in place (exact, from the reported usage).
    pub fn price(&self, call: &mut CallRecord) {
        if !self.pricing {
            return;
        }
        let priced = self.prices.load().price_call(call);
        call.cost_pico_usd = priced.cost.map(|c| c.pico_usd());
        call.input_cost_pico_usd = priced.input_cost.map(|c| c.pico_usd());
        call.priced_model = priced.matched_model;
    }

    /// Hands a finished, priced call to every sink and its span to the export.
    pub fn record(&self, mut call: CallRecord) {
        if let Some(tools) = &self.tools {
            // First, so a request answering these calls finds them as early as possible.
            let pushed_out = tools.remember(&call, Instant::now());
            self.emit_tools(pushed_out);
        }
        self.capture_output(&mut call);
        self.split_content(&mut call);
        self.redact_error(&mut call);
        let span = span_for(&call);
        for sink in &self.sinks {
            sink.record(&call, &span);
        }
        log(&call, &span);
        // The store and the export last: the store copies the span with its own content, the
        // export takes it.
        if let Some(store) = &self.store {
            store.call(&span, call.kept_content.take(), call.cost_pico_usd);
        }
        if let Some(export) = &self.export {
            export.submit(span);
        }
    }

    /// Hands a span that is not a call's own (a tool span read from the wire, a span received
    /// over OTLP) to the trace store and to the export; never waits. `stored` is the store's
    /// copy when it keeps other content than the export (its own capture level), and `origin`
    /// its resource and scope when it is not this gateway's.
    ///
    /// The exported span carries `origin` through the queue and the spool (it is exported
    /// under that resource and scope); the store keeps origins apart, so its copy has none.
    pub fn record_span(
        &self,
        mut exported: SpanRecord,
        stored: Option<SpanRecord>,
        origin: Option<Arc<Origin>>,
    ) {
        exported.origin = None;
        if let Some(store) = &self.store {
            let mut stored = stored.unwrap_or_else(|| exported.clone());
            stored.origin = None;
            store.span(stored, origin.clone(), None);
        }
        if let Some(export) = &self.export {
            exported.origin = origin;
            export.submit(exported);
        }
    }

    /// Whether the export queue is too crowded to take `n` spans from outside the gateway
    /// (see `ExportHandle::crowded`); never when there is no export.
    pub fn export_crowded(&self, n: usize) -> bool {
        self.export.as_ref().is_some_and(|e| e.crowded(n))
    }

    /// The trace store's queue has no room for `n` more spans (they would be dropped from the
    /// store): the OTLP receiver then refuses a request, to be retried, rather than lose part
    /// of it.
    pub fn store_crowded(&self, n: usize) -> bool {
        self.store.as_ref().is_some_and(|s| s.crowded(n))
    }

    /// The tool table, when tool spans are on (the OTLP receiver reports the app's own
    /// `execute_tool` spans to it).
    pub fn tools(&self) -> Option<&Arc<ToolTable>> {
        self.tools.as_ref()
    }

    /// A request carrying `results` arrived now: the tool spans of the calls they answer.
    pub fn tool_results(
        &self,
        results: &[ToolResult],
        trace_id: [u8; 16],
        asked: Option<CaptureLevel>,
    ) {
        if let Some(tools) = &self.tools {
            let spans = tools.answer(results, trace_id, asked, SystemTime::now(), Instant::now());
            self.emit_tools(spans);
        }
    }

    /// Ends the tool calls whose wait is over and releases held tool spans.
    pub fn sweep_tools(&self) {
        if let Some(tools) = &self.tools {
            let spans = tools.sweep(Instant::now());
            self.emit_tools(spans);
        }
    }

    /// Shutdown: every tool span still held goes out, and every pending call ends as
    /// unanswered (`sidetrace.tool.unanswered_reason=shutdown`).
    pub fn drain_tools(&self) {
        if let Some(tools) = &self.tools {
            let spans = tools.drain();
            self.emit_tools(spans);
        }
    }

    fn emit_tools(&self, spans: Vec<ToolSpan>) {
        for (exported, stored) in spans {
            self.record_span(exported, stored, None);
        }
    }

    /// The content was captured at the higher of the export's and the store's levels: each
    /// gets its own from here (the span carries the export's). The one at the higher level
    /// takes the content as it is; the other a lowered copy. Content captured apart (one
    /// keeps `full` text, the other `redacted`) came with the store's copy already.
    fn split_content(&self, call: &mut CallRecord) {
        if call.kept_content.is_some() {
            return;
        }
        let Some(content) = call.content.take() else {
            return;
        };
        let asked = call.metadata.capture;
        let export = self.capturer.level(asked);
        match self.capturer.store_level(asked) {
            Some(store) if store > export => {
                call.content = self.capturer.lower(&content, export);
                call.kept_content = Some(content);
            }
            Some(store) => {
                call.kept_content = self.capturer.lower(&content, store);
                call.content = Some(content);
            }
            None => call.content = Some(content),
        }
    }

    /// Puts what the response said (text, tool calls, finish reason) in the captured content
    /// (and in the store's copy when it was captured apart), each at its own level.
    /// The provider's error message becomes the span's status, exported and stored at every
    /// capture level, so it is redacted as captured text is: some providers quote the request
    /// in theirs.
    fn redact_error(&self, call: &mut CallRecord) {
        let message = call
            .response
            .as_mut()
            .and_then(|r| r.error.as_mut())
            .and_then(|e| e.message.as_mut());
        if let Some(message) = message
            && let Cow::Owned(redacted) = self.capturer.redactor.redact(message)
        {
            *message = redacted;
        }
    }

    fn capture_output(&self, call: &mut CallRecord) {
        let Some(response) = &call.response else {
            return;
        };
        let Some(output) = &response.output else {
            return;
        };
        let finish = response.finish_reasons.first();
        for content in [&mut call.content, &mut call.kept_content]
            .into_iter()
            .flatten()
        {
            self.capturer.output(
                content,
                &output.text,
                &output.tool_calls,
                finish.map(String::as_str),
                output.truncated,
            );
            content.truncated |= output.truncated;
        }
    }
}

/// One debug line per call and per span.
fn log(call: &CallRecord, span: &SpanRecord) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let usage = call.response.as_ref().map(|r| &r.usage);
    tracing::debug!(
        provider = %call.provider,
        model = call.model().unwrap_or("unknown"),
        path = %call.path,
        status = call.status,
        outcome = call.outcome.as_str(),
        error_type = call.error_type.as_deref(),
        stream = call.request.stream,
        input_tokens = usage.and_then(|u| u.input_tokens),
        output_tokens = usage.and_then(|u| u.output_tokens),
        cached_input_tokens = usage.and_then(|u| u.cached_input_tokens),
        reasoning_tokens = usage.and_then(|u| u.reasoning_tokens),
        duration_ms = call.duration.as_secs_f64() * 1e3,
        ttft_ms = call.time_to_first_token.map(|d| d.as_secs_f64() * 1e3),
        "call"
    );
    tracing::debug!(
        trace_id = %call.trace.trace_id_hex(),
        span_id = %call.trace.span_id_hex(),
        name = %span.name,
        attributes = span.attributes.len(),
        "span"
    );
}
