// agentplane web console. No library: the DAG is drawn as SVG here, the
// task and its selected subtask's log follow server-sent events.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  function notice(msg, kind) {
    const n = document.getElementById("notice");
    if (!n) return;
    n.textContent = msg;
    n.className = "notice " + (kind || "bad");
    n.hidden = !msg;
  }

  // confirmThen asks in the page's dialog, then runs fn on Confirm.
  function confirmThen(text, fn) {
    const d = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    d.returnValue = "";
    d.addEventListener("close", function onClose() {
      d.removeEventListener("close", onClose);
      if (d.returnValue === "ok") fn();
    });
    d.showModal();
  }

  // post sends an action with the CSRF token; resolves to the answer's
  // JSON, or shows why it failed and resolves to null.
  async function post(url) {
    let res;
    try {
      res = await fetch(url, { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
    } catch (e) {
      notice("The server could not be reached: " + e.message + ". Nothing was changed.");
      return null;
    }
    let body = {};
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      notice(body.error || ("The server answered " + res.status + "."));
      return null;
    }
    notice("");
    return body;
  }

  // Hosts page: each action asks first, then opens the task it created.
  document.querySelectorAll("#hosts button.action").forEach(function (b) {
    b.addEventListener("click", function () {
      confirmThen(b.dataset.confirm, async function () {
        const r = await post(b.dataset.url);
        if (r) window.location.assign("/ui/tasks/" + r.taskId);
      });
    });
  });

  const page = document.getElementById("task");
  if (page) taskPage(page);

  function taskPage(page) {
    const taskId = page.dataset.taskId;
    const canManage = document.body.dataset.taskManager === "true";
    const dag = document.getElementById("dag");
    const live = document.getElementById("live");
    let task = null;
    let selected = 0;
    let stream = null;
    let logStream = null;

    function watch() {
      if (stream) return;
      stream = new EventSource("/ui/tasks/" + taskId + "/events");
      live.textContent = "connecting…";
      stream.onopen = function () { live.textContent = "live"; live.className = "live on"; };
      stream.addEventListener("task", function (e) { task = JSON.parse(e.data); render(); });
      stream.addEventListener("final", function () { stop("final: no more changes"); });
      stream.addEventListener("problem", function (e) { stop("stopped"); notice(JSON.parse(e.data).error); });
      stream.onerror = function () {
        if (stream && stream.readyState === EventSource.CLOSED) {
          stop("stopped");
          notice("Live updates stopped (your session may have expired): reload the page.");
        } else {
          live.textContent = "reconnecting…"; live.className = "live";
        }
      };
    }
    function stop(why) {
      if (stream) stream.close();
      stream = null;
      live.textContent = why; live.className = "live";
    }

    function render() {
      document.getElementById("task-name").textContent = task.name;
      const ts = document.getElementById("task-status");
      ts.textContent = task.status; ts.className = "badge s-" + task.status;
      page.dataset.status = task.status;
      drawDAG(dag, task, selected, select);
      showTaskActions();
      showSubtask();
    }

    function showTaskActions() {
      if (!canManage) return;
      const failed = task.status === "FAILED";
      document.getElementById("task-retry").hidden = !failed;
      document.getElementById("task-rollback").hidden = !failed;
    }

    function select(id) {
      if (selected === id) return;
      selected = id;
      drawDAG(dag, task, selected, select);
      showSubtask();
      followLog();
    }

    function subtask() {
      return task && task.subtasks.find(function (s) { return s.id === selected; });
    }

    function showSubtask() {
      const st = subtask();
      const box = document.getElementById("subtask");
      box.hidden = !st;
      if (!st) return;
      box.dataset.subtaskId = st.id;
      document.getElementById("subtask-name").textContent = st.name;
      document.getElementById("subtask-meta").textContent = "subtask " + st.id + " · attempt " + st.runTime +
        (st.hostId ? " · host " + st.hostId : "") + (st.operation ? " · " + st.operation : "");
      const s = document.getElementById("subtask-status");
      s.textContent = st.status; s.className = "badge s-" + st.status;
      document.getElementById("subtask-message").textContent = st.message || "";
      if (!canManage) return;
      document.getElementById("subtask-retry").hidden = !(st.status === "FAILED" && task.status === "FAILED");
      document.getElementById("subtask-skip").hidden = !(st.status === "FAILED" && task.status === "FAILED");
      document.getElementById("subtask-cancel").hidden = st.status !== "RUNNING";
    }

    function followLog() {
      if (logStream) logStream.close();
      const pre = document.getElementById("log");
      pre.textContent = "";
      if (!selected) return;
      logStream = new EventSource("/ui/tasks/" + taskId + "/subtasks/" + selected + "/log");
      logStream.addEventListener("log", function (e) {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent += JSON.parse(e.data).text;
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      });
      logStream.addEventListener("problem", function (e) { notice(JSON.parse(e.data).error); logStream.close(); });
    }

    function act(what, url) {
      confirmThen(what, async function () {
        const r = await post(url);
        if (r) watch(); // a final task moves again: follow it anew
      });
    }
    if (canManage) {
      document.querySelectorAll("#task-actions button").forEach(function (b) {
        b.addEventListener("click", function () {
          act((b.dataset.op === "retry" ? "Retry" : "Roll back") + " task " + taskId + " (" + task.name + ")?",
            "/ui/api/tasks/" + taskId + "/" + b.dataset.op);
        });
      });
      document.querySelectorAll("#subtask-actions button").forEach(function (b) {
        b.addEventListener("click", function () {
          const st = subtask();
          if (!st) return;
          const verb = { retry: "Retry", skip: "Skip", cancel: "Cancel" }[b.dataset.op];
          act(verb + " subtask " + st.id + " (" + st.name + ")?",
            "/ui/api/tasks/" + taskId + "/subtasks/" + st.id + "/" + b.dataset.op);
        });
      });
    }
    watch();
  }

  // drawDAG lays the subtasks out in columns by depth (longest path from a
  // root), a batch's branches in rows by branch, each branch boxed; edges go
  // from each upstream to its downstream.
  function drawDAG(svg, task, selected, onSelect) {
    const W = 224, H = 56, GAPX = 56, GAPY = 34, PAD = 24;
    const byId = {};
    task.subtasks.forEach(function (s) { byId[s.id] = s; });
    const level = {};
    function depth(s) {
      if (level[s.id] !== undefined) return level[s.id];
      level[s.id] = 0; // guards a cycle, which a plan never has
      let d = 0;
      s.upstreams.forEach(function (u) { if (byId[u]) d = Math.max(d, depth(byId[u]) + 1); });
      level[s.id] = d;
      return d;
    }
    task.subtasks.forEach(depth);
    const cols = {};
    let maxBranch = -1;
    task.subtasks.forEach(function (s) {
      (cols[level[s.id]] = cols[level[s.id]] || []).push(s);
      maxBranch = Math.max(maxBranch, s.parallelIdx);
    });
    let rows = maxBranch + 1;
    Object.values(cols).forEach(function (c) {
      rows = Math.max(rows, c.filter(function (s) { return s.parallelIdx < 0; }).length);
    });
    const pos = {};
    Object.keys(cols).forEach(function (l) {
      const shared = cols[l].filter(function (s) { return s.parallelIdx < 0; });
      shared.forEach(function (s, i) {
        const row = shared.length === 1 && cols[l].length === 1 ? (rows - 1) / 2 : i;
        pos[s.id] = { x: PAD + l * (W + GAPX), y: PAD + row * (H + GAPY) };
      });
      cols[l].forEach(function (s) {
        if (s.parallelIdx >= 0) pos[s.id] = { x: PAD + l * (W + GAPX), y: PAD + s.parallelIdx * (H + GAPY) };
      });
    });
    const nCols = Object.keys(cols).length;
    svg.setAttribute("width", PAD * 2 + nCols * W + Math.max(0, nCols - 1) * GAPX);
    svg.setAttribute("height", PAD * 2 + Math.max(1, rows) * H + Math.max(0, rows - 1) * GAPY);
    while (svg.firstChild) svg.removeChild(svg.firstChild);

    const el = function (name, attrs, parent) {
      const e = document.createElementNS(SVG, name);
      Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
      (parent || svg).appendChild(e);
      return e;
    };
    const defs = el("defs", {});
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }, marker);

    // Batch branches, boxed.
    const branches = {};
    task.subtasks.forEach(function (s) {
      if (s.parallelIdx < 0) return;
      const p = pos[s.id];
      const b = branches[s.parallelIdx] = branches[s.parallelIdx] || { x1: p.x, y1: p.y, x2: p.x + W, y2: p.y + H, host: s.hostId };
      b.x1 = Math.min(b.x1, p.x); b.y1 = Math.min(b.y1, p.y);
      b.x2 = Math.max(b.x2, p.x + W); b.y2 = Math.max(b.y2, p.y + H);
    });
    Object.keys(branches).forEach(function (i) {
      const b = branches[i];
      el("rect", { x: b.x1 - 10, y: b.y1 - 18, width: b.x2 - b.x1 + 20, height: b.y2 - b.y1 + 26, rx: 8, class: "branch", "data-branch": i });
      const t = el("text", { x: b.x1 - 4, y: b.y1 - 5, class: "branch-label" });
      t.textContent = "branch " + i + (b.host ? " · host " + b.host : "");
    });

    task.subtasks.forEach(function (s) {
      const p = pos[s.id];
      s.upstreams.forEach(function (u) {
        const q = pos[u];
        if (!q) return;
        const x1 = q.x + W, y1 = q.y + H / 2, x2 = p.x, y2 = p.y + H / 2, mx = (x1 + x2) / 2;
        el("path", { d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2,
          class: "edge", "marker-end": "url(#arrow)", "data-from": u, "data-to": s.id });
      });
    });

    task.subtasks.forEach(function (s) {
      const p = pos[s.id];
      const g = el("g", { class: "node st-" + s.status + (s.id === selected ? " selected" : ""), tabindex: "0",
        "data-subtask-id": s.id, "data-name": s.name, "data-status": s.status, transform: "translate(" + p.x + "," + p.y + ")" });
      el("rect", { width: W, height: H, rx: 6 }, g);
      const name = el("text", { x: 10, y: 22, class: "name" }, g);
      name.textContent = s.name.length > 30 ? s.name.slice(0, 29) + "…" : s.name;
      const title = el("title", {}, g);
      title.textContent = s.name + " (subtask " + s.id + "): " + s.status + (s.message ? " — " + s.message : "");
      const st = el("text", { x: 10, y: 42, class: "status" }, g);
      st.textContent = s.status + (s.runTime > 1 ? " · attempt " + s.runTime : "");
      g.addEventListener("click", function () { onSelect(s.id); });
      g.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") onSelect(s.id); });
    });
  }
})();
