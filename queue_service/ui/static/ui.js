// queue-service dashboard glue (no build step). Loaded after htmx and before its SSE extension, so
// the extension uses this EventSource factory: a reconnect it makes itself (after the browser gave
// up, e.g. the server was down for a while) still resumes after the last event id seen.
(function () {
  var lastIds = {};
  htmx.createEventSource = function (url) {
    var base = url.split("?")[0];
    var target = lastIds[base] ? base + "?last_event_id=" + encodeURIComponent(lastIds[base]) : url;
    var source = new EventSource(target, { withCredentials: true });
    source.addEventListener("open", function () { document.documentElement.dataset.live = "open"; });
    source.addEventListener("error", function () { document.documentElement.dataset.live = "closed"; });
    source.addEventListener("change", function (e) {
      if (e.lastEventId) { lastIds[base] = e.lastEventId; }
      document.documentElement.dataset.lastEvent = e.lastEventId || "";
    });
    return source;
  };
  // every htmx request (the live refreshes) carries the CSRF token too, should one ever post
  document.addEventListener("htmx:configRequest", function (e) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) { e.detail.headers["X-CSRF-Token"] = meta.content; }
  });
  // the task page's live output (issue 14): the task's stream, each chunk appended as text (never
  // as HTML); the panel is hx-preserve'd, so the page's own live refreshes leave it (and its stream) alone
  var MAX_LINES = 5000;
  function followOutput(panel) {
    if (panel.dataset.following) { return; }
    panel.dataset.following = "1";
    var lines = panel.querySelector("[data-testid=stream-lines]");
    var empty = panel.querySelector("[data-testid=stream-empty]");
    var state = panel.querySelector("[data-testid=stream-state]");
    var count = 0;
    var source = new EventSource(panel.dataset.streamUrl, { withCredentials: true });
    source.addEventListener("open", function () { state.textContent = "live"; });
    source.addEventListener("error", function () {
      if (panel.dataset.ended !== "1") { state.textContent = "reconnecting…"; }
    });
    source.addEventListener("chunk", function (e) {
      var chunk = JSON.parse(e.data).chunk;
      var atBottom = lines.scrollTop + lines.clientHeight >= lines.scrollHeight - 4;
      lines.appendChild(document.createTextNode(/\n$/.test(chunk) ? chunk : chunk + "\n"));
      while (lines.childNodes.length > MAX_LINES) { lines.removeChild(lines.firstChild); }
      count += 1;
      panel.dataset.chunks = String(count);
      if (empty) { empty.hidden = true; }
      if (atBottom) { lines.scrollTop = lines.scrollHeight; }
    });
    source.addEventListener("done", function () {
      source.close();
      panel.dataset.ended = "1";
      state.textContent = "ended";
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-stream-url]").forEach(followOutput);
  });
  // "select all" on the dead-letter page
  document.addEventListener("change", function (e) {
    if (e.target && e.target.id === "select-all") {
      document.querySelectorAll('input[name="key"]').forEach(function (box) { box.checked = e.target.checked; });
    }
  });
})();
