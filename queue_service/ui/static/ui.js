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
  // "select all" on the dead-letter page
  document.addEventListener("change", function (e) {
    if (e.target && e.target.id === "select-all") {
      document.querySelectorAll('input[name="key"]').forEach(function (box) { box.checked = e.target.checked; });
    }
  });
})();
