// The console's live parts: progress pushed by the task stream (SSE), and task creation with an
// import's upload through the REST API. No framework, no build step; the page's CSP allows only
// scripts from this origin, so nothing here is inline or evaluated.
(function () {
  "use strict";

  var body = document.body;
  var STREAM_BASE = body.dataset.streamBase || "/api/v1/operations/tasks";
  var FILES_PATH = body.dataset.filesPath || "/api/v1/files/";
  // A browser opens at most 6 HTTP/1.1 connections per host: leave two for pages and fragments.
  var MAX_STREAMS = 4;
  var POLL_MS = 2000;
  var LIVE = { pending: true, scheduled: true, processing: true };

  var streams = new Map(); // task id -> {close: fn}
  var latest = new Map(); // task id -> newest snapshot seen (re-applied after a table refresh)

  function isLive(task) {
    return LIVE[task.status] || (task.status === "failed" && task.nextRetryAt);
  }

  function formatPercent(value) {
    return (Number(value) || 0).toFixed(1) + " %";
  }

  // Every element showing the task gets the snapshot: fields by data-field, the badge's colour,
  // the progress element's value. Status changes are announced so htmx can refresh the actions.
  function apply(task) {
    var nodes = document.querySelectorAll('[data-task-id="' + task.id + '"]');
    nodes.forEach(function (node) {
      var before = node.dataset.status;
      node.querySelectorAll("[data-field]").forEach(function (el) {
        var value = task[el.dataset.field];
        if (value === undefined) return;
        if (el.tagName === "PROGRESS") {
          el.value = Number(value) || 0;
        } else if (el.dataset.format === "percent") {
          el.textContent = formatPercent(value);
        } else {
          el.textContent = value === null ? "" : String(value);
        }
        if (el.dataset.field === "status") el.className = "badge badge-" + value;
      });
      node.dataset.status = task.status;
      node.dataset.updatedAt = task.updatedAt || "";
      if (before !== task.status) {
        node.dispatchEvent(new CustomEvent("co-status-changed", { bubbles: true, detail: task }));
      }
    });
    document.body.dispatchEvent(new CustomEvent("co-task-changed", { detail: task }));
  }

  function remember(task) {
    latest.set(task.id, task);
    apply(task);
  }

  // Polling fallback, only when the stream cannot be opened at all (a proxy that refuses
  // text/event-stream, a server without it): the task's JSON every 2 s until it ends.
  function poll(id) {
    var stopped = false;
    function tick() {
      if (stopped) return;
      fetch(STREAM_BASE + "/" + encodeURIComponent(id), { headers: { accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (answer) {
          if (!answer || stopped) { finish(id); return; }
          remember(answer.task);
          if (isLive(answer.task)) setTimeout(tick, POLL_MS); else finish(id);
        })
        .catch(function () { if (!stopped) setTimeout(tick, POLL_MS); });
    }
    tick();
    return { close: function () { stopped = true; } };
  }

  function watch(id) {
    var opened = false;
    var source = new EventSource(STREAM_BASE + "/" + encodeURIComponent(id) + "/stream");
    var handle = { close: function () { source.close(); } };
    source.addEventListener("open", function () { opened = true; });
    source.addEventListener("task", function (e) { opened = true; remember(JSON.parse(e.data)); });
    // The final snapshot: the stream is over (without close() the browser would reconnect).
    source.addEventListener("end", function (e) { source.close(); remember(JSON.parse(e.data)); finish(id); });
    source.addEventListener("error", function () {
      // Reconnects (with Last-Event-ID) are the browser's job while readyState is CONNECTING.
      if (source.readyState !== EventSource.CLOSED) return;
      if (opened) { finish(id); return; }
      if (streams.get(id) === handle) streams.set(id, poll(id));
    });
    return handle;
  }

  function finish(id) {
    var s = streams.get(id);
    if (s) s.close();
    streams.delete(id);
    scan();
  }

  // Streams follow what the page shows: open for live tasks (up to MAX_STREAMS), close for the
  // tasks that left the page. Run at load and after every htmx swap.
  function scan() {
    var wanted = [];
    document.querySelectorAll("[data-task-id][data-live]").forEach(function (node) {
      var id = node.dataset.taskId;
      if (wanted.indexOf(id) < 0) wanted.push(id);
      var known = latest.get(id);
      // A refreshed table may be older than the stream's last snapshot: show the newer one.
      if (known && (known.updatedAt || "") > (node.dataset.updatedAt || "")) apply(known);
    });
    streams.forEach(function (s, id) {
      if (wanted.indexOf(id) < 0) { s.close(); streams.delete(id); }
    });
    for (var i = 0; i < wanted.length && streams.size < MAX_STREAMS; i++) {
      var id = wanted[i];
      var known = latest.get(id);
      if (!streams.has(id) && !(known && !isLive(known))) streams.set(id, watch(id));
    }
  }

  // --- task creation (New task page) -------------------------------------------------------------

  function problemText(answer, status) {
    if (answer && answer.detail) return (answer.code ? answer.code + ": " : "") + answer.detail;
    return "the request failed (HTTP " + status + ")";
  }

  // A signed URL of this service's own file endpoint is sent to this origin (the service may
  // name itself by another host name than the browser does); S3 URLs go where they point.
  function uploadTarget(url) {
    var parsed = new URL(url, location.href);
    return parsed.pathname.indexOf(FILES_PATH) === 0 ? parsed.pathname + parsed.search : parsed.href;
  }

  function setupCreate(form) {
    var status = document.getElementById("create-status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = new FormData(form);
      var file = data.get("file");
      var payload = { taskType: data.get("taskType"), entityType: data.get("entityType") || "" };
      if (data.get("requestedBy")) payload.requestedBy = data.get("requestedBy");
      var params = (data.get("params") || "").trim();
      if (params) {
        try { payload.paramsObject = JSON.parse(params); } catch (e) {
          status.textContent = "params: not JSON (" + e.message + ")"; return;
        }
      }
      if (file && file.name) {
        payload.fileName = file.name;
        payload.fileSize = file.size;
        if (file.type) payload.contentType = file.type;
      }
      status.textContent = "creating…";
      fetch(form.dataset.createUrl, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(payload),
      })
        .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, status: r.status, body: j }; }); })
        .then(function (res) {
          if (!res.ok) throw new Error(problemText(res.body, res.status));
          var id = res.body.task.id;
          if (!(file && file.name && res.body.uploadUrl)) return id;
          status.textContent = "uploading " + file.name + "…";
          return fetch(uploadTarget(res.body.uploadUrl), {
            method: "PUT",
            headers: { "content-type": file.type || "application/octet-stream" },
            body: file,
          }).then(function (r) {
            if (!r.ok) throw new Error("the task " + id + " exists, but its upload failed (HTTP " + r.status + ")");
            return id;
          });
        })
        .then(function (id) { location.assign("/console/tasks/" + encodeURIComponent(id)); })
        .catch(function (err) { status.textContent = err.message; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    scan();
    var form = document.getElementById("create-task");
    if (form) setupCreate(form);
  });
  document.body.addEventListener("htmx:afterSettle", scan);
  window.addEventListener("pagehide", function () { streams.forEach(function (s) { s.close(); }); });
})();
