// A build's conversation, live: the task's event stream (GET /tasks/{id}/events, the API's
// own SSE route; the browser resumes it after a dropped connection with Last-Event-ID).
//
// - Every text is set with textContent: agent output, tool input and file names are shown,
//   never parsed as markup.
// - An event is handled once: one whose seq is not past the last one seen is ignored, so a
//   resumed stream neither loses nor doubles anything.
// - Events are kept in memory; only the newest WINDOW are in the page at first (a build may
//   have thousands), older ones come in pages of WINDOW on demand. Bursts are drawn in one
//   batch per frame.
"use strict";
(function () {
  const root = document.getElementById("conversation");
  if (!root) return;
  const WINDOW = 200;
  const TYPES = ["init", "message", "tool_use", "tool_result", "status", "error", "result"];
  const list = root.querySelector(".events");
  const earlier = root.querySelector(".earlier");
  const streamState = root.querySelector(".stream-state");
  const steps = document.getElementById("steps");
  const stats = document.getElementById("stats");

  const events = []; // every event received, in seq order
  let firstShown = 0; // index in events of the oldest one in the page
  let lastSeq = 0;
  let pending = [];
  let drawing = false;
  const toolNames = new Map(); // tool_use id -> tool name, to label results
  const counts = { message: 0, tool_use: 0, error: 0 };

  const source = new EventSource(root.dataset.events);
  for (const type of TYPES) source.addEventListener(type, receive);
  source.addEventListener("open", () => setState("live", "live"));
  source.addEventListener("error", (e) => {
    if (e instanceof MessageEvent) return; // an agent's "error" event: handled by receive
    if (root.dataset.state === "ended") return;
    // The browser retries a dropped connection by itself, not a refused one (signed out).
    if (source.readyState === EventSource.CLOSED) setState("closed", "disconnected: reload the page");
    else setState("reconnecting", "reconnecting…");
  });
  earlier.addEventListener("click", showEarlier);

  function setState(state, text) {
    root.dataset.state = state;
    streamState.textContent = text;
  }

  function receive(message) {
    if (!message.data) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    if (typeof event.seq !== "number" || event.seq <= lastSeq) return;
    lastSeq = event.seq;
    pending.push(event);
    if (event.type === "result") source.close();
    if (!drawing) {
      drawing = true;
      // A timer, not requestAnimationFrame: it also runs in a background tab.
      setTimeout(draw, 16);
    }
  }

  function draw() {
    drawing = false;
    const batch = pending;
    pending = [];
    const follow = nearBottom();
    for (const event of batch) {
      events.push(event);
      track(event);
    }
    // Only the newest WINDOW of a burst go into the page; the rest wait behind "earlier".
    const start = Math.max(events.length - batch.length, events.length - WINDOW, firstShown);
    if (start > events.length - batch.length) {
      list.replaceChildren();
      firstShown = start;
    }
    const fragment = document.createDocumentFragment();
    for (let i = start; i < events.length; i++) fragment.append(render(events[i]));
    list.append(fragment);
    // A long build watched live: keep the page at most two windows deep while following.
    const excess = events.length - firstShown - 2 * WINDOW;
    if (follow && excess > 0) {
      for (let i = 0; i < excess; i++) list.firstElementChild.remove();
      firstShown += excess;
    }
    updateEarlier();
    updateStats();
    root.dataset.count = String(events.length);
    root.dataset.lastSeq = String(lastSeq);
    if (follow) window.scrollTo(0, document.body.scrollHeight);
    if (batch.some((e) => e.type === "result")) {
      setState("ended", "finished");
      document.dispatchEvent(new Event("forgeline:refresh"));
    }
  }

  function showEarlier() {
    const start = Math.max(0, firstShown - WINDOW);
    const fragment = document.createDocumentFragment();
    for (let i = start; i < firstShown; i++) fragment.append(render(events[i]));
    list.prepend(fragment);
    firstShown = start;
    updateEarlier();
  }

  function updateEarlier() {
    earlier.hidden = firstShown === 0;
    earlier.textContent = `Show ${Math.min(WINDOW, firstShown)} earlier events (${firstShown} hidden)`;
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function pretty(value) {
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function collapsible(label, body, open) {
    const details = el("details");
    details.open = Boolean(open);
    details.append(el("summary", "", label), el("pre", "", body));
    return details;
  }

  function render(event) {
    const data = event.data || {};
    const item = el("li", `event ${event.type}`);
    item.dataset.seq = String(event.seq);
    const time = typeof event.time === "string" ? event.time.slice(11, 19) : "";
    item.append(el("div", "meta", `#${event.seq} · ${time} · ${event.type}`));
    switch (event.type) {
      case "message":
        item.append(el("pre", "text", data.text || ""));
        break;
      case "tool_use": {
        const summary = `${data.name}: ${preview(data.input)}`;
        item.append(collapsible(summary, pretty(data.input), false));
        break;
      }
      case "tool_result": {
        if (data.is_error) item.classList.add("is-error");
        const name = toolNames.get(data.id) || "tool";
        const label = `${data.is_error ? "error from" : "result of"} ${name}`;
        item.append(collapsible(label, String(data.output ?? ""), false));
        break;
      }
      case "init":
        item.append(el("div", "", `model ${data.model || "?"} · ${(data.tools || []).length} tools`));
        break;
      case "status":
        item.append(el("div", "", describeStatus(data)));
        break;
      case "error":
        item.append(el("pre", "error", `${data.kind || "error"}: ${data.message || ""}`));
        break;
      case "result":
        if (data.status !== "succeeded") item.classList.add("unsuccessful");
        item.append(el("div", "", `${data.status}: ${data.text || ""}`));
        break;
      default:
        item.append(el("pre", "", pretty(data)));
    }
    return item;
  }

  function preview(input) {
    const text = input && typeof input === "object"
      ? String(input.command || input.file_path || input.pattern || input.url || JSON.stringify(input))
      : String(input);
    return text.length > 120 ? `${text.slice(0, 120)}…` : text;
  }

  function describeStatus(data) {
    if (data.state === "step") {
      const took = typeof data.duration_ms === "number" ? ` in ${seconds(data.duration_ms)}` : "";
      return `step ${data.step} ${data.phase}${took}${data.outcome && data.outcome !== "ok" ? ` (${data.outcome})` : ""}`;
    }
    return [data.state, data.attempt ? `attempt ${data.attempt}` : ""].filter(Boolean).join(" ");
  }

  function seconds(ms) {
    return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
  }

  function track(event) {
    const data = event.data || {};
    if (event.type in counts) counts[event.type] += 1;
    if (event.type === "tool_use") toolNames.set(data.id, data.name);
    if (event.type === "status" && data.state === "step") trackStep(data);
    if (event.type === "result") stats.dataset.result = JSON.stringify({
      cost: data.cost_usd, usage: data.usage, turns: data.num_turns, ms: data.duration_ms,
    });
  }

  function trackStep(data) {
    let item = steps.querySelector(`li[data-step="${CSS.escape(String(data.step))}"]`);
    if (!item) {
      item = el("li");
      item.dataset.step = String(data.step);
      steps.append(item);
    }
    let state = "running";
    let text = `${data.step}: running`;
    if (data.phase === "finished") {
      state = data.outcome || "ok"; // ok, skipped, failed, cancelled
      text = `${data.step}: ${data.outcome} in ${seconds(data.duration_ms || 0)}`;
    } else if (data.phase === "skipped") {
      state = "skipped";
      text = `${data.step}: skipped${data.reason ? ` (${data.reason})` : ""}`;
    }
    item.className = state;
    item.textContent = text;
  }

  function updateStats() {
    const parts = [
      `${events.length} events`,
      `${counts.message} messages`,
      `${counts.tool_use} tool calls`,
    ];
    if (counts.error) parts.push(`${counts.error} errors`);
    if (stats.dataset.result) {
      const result = JSON.parse(stats.dataset.result);
      const usage = result.usage || {};
      if (typeof result.cost === "number") parts.push(`$${result.cost.toFixed(4)}`);
      parts.push(`${usage.input_tokens || 0} tokens in · ${usage.output_tokens || 0} out`);
      if (result.turns) parts.push(`${result.turns} turns`);
    }
    stats.textContent = parts.join(" · ");
  }
})();
