// The QvDC status page: renders /status/events (Server-Sent Events) or, when the stream is
// refused, polls /status/snapshot.json. No build step, no dependencies. Everything shown
// comes from hosts and operators (hostnames, paths, messages): it is only ever put into the
// page as text (textContent, setAttribute), never as HTML.
"use strict";

(function () {
  const EVENTS = "/status/events";
  const SNAPSHOT = "/status/snapshot.json";
  const POLL_MS = 5000;
  const RETRY_STREAM_MS = 30000;

  let offset = 0; // server clock - this browser's clock, in seconds
  let source = null;
  let pollTimer = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === "") continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function bytes(n) {
    let value = Number(n) || 0;
    for (const unit of ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]) {
      if (value < 1024 || unit === "PiB") {
        return unit === "B" ? `${value.toFixed(0)} B` : `${value.toFixed(1)} ${unit}`;
      }
      value /= 1024;
    }
    return `${n} B`;
  }

  function ageText(ts) {
    if (!ts) return "-";
    const seconds = Math.max(0, Math.floor(Date.now() / 1000 + offset - ts));
    if (seconds < 120) return `${seconds}s ago`;
    if (seconds < 7200) return `${Math.floor(seconds / 60)}m ago`;
    return `${Math.floor(seconds / 3600)}h ago`;
  }

  function age(ts) {
    return el("td", { class: "age", "data-ts": ts || null }, ageText(ts));
  }

  function tick() {
    for (const cell of document.querySelectorAll("[data-ts]")) {
      cell.textContent = ageText(Number(cell.getAttribute("data-ts")));
    }
  }

  function badge(text, state, title) {
    return el("span", { class: `badge state-${state}`, title: title }, text);
  }

  function hostRow(row) {
    const flags = [];
    if (row.node_phase === "MAINTENANCE" || row.node_phase === "DRAINING") {
      flags.push(badge(row.node_phase, "maintenance"));
    }
    if (row.stale) flags.push(badge("STALE", "stale"));
    if (!row.assigned) flags.push(badge("unassigned", "pending"));
    // A stale row's health is old news: shown in the stale colour, never as a live green.
    let healthState = row.state;
    if (row.state === "stale") healthState = "stale";
    else if (row.state === "maintenance") healthState = healthOf(row.health);
    const tr = el(
      "tr",
      { class: `host state-${row.state}`, "data-node-id": row.node_id, "data-state": row.state },
      el("td", { class: "hostname" }, row.hostname || row.node_id.slice(0, 8)),
      el("td", { class: "health" }, badge(row.health, healthState, row.stale ? "last reported health" : null), ...flags),
      el("td", { class: "mount" }, row.mount_path || "-"),
      el("td", { class: "num" }, `${bytes(row.used_bytes)} / ${bytes(row.total_bytes)}`),
      el("td", { class: "num" }, String(row.volumes)),
      age(row.reported_at),
      age(row.changed_at),
    );
    const rows = [tr];
    if (row.message) {
      rows.push(el("tr", { class: "host-message" }, el("td", {}), el("td", { colspan: 6, class: "message" }, row.message)));
    }
    return rows;
  }

  function healthOf(health) {
    return { HEALTHY: "healthy", DEGRADED: "degraded", UNKNOWN: "unknown" }[health] || "error";
  }

  function poolCard(pool) {
    const head = el(
      "div",
      { class: "pool-head" },
      el("span", { class: "pool-name" }, pool.name),
      el("span", { class: "muted" }, pool.backend),
      badge(pool.phase, pool.state),
      el("span", {}, `${bytes(pool.used_bytes)} / ${bytes(pool.total_bytes)}`),
      el("span", { class: "muted" }, `${pool.volumes} volumes`),
      el("span", { class: "muted" }, `${pool.healthy}/${pool.assigned} hosts healthy`),
    );
    const card = el("div", { class: `pool state-${pool.state}`, "data-pool-id": pool.id, "data-phase": pool.phase }, head);
    if (pool.message) card.append(el("p", { class: "message pool-message" }, pool.message));
    if (pool.rows.length) {
      const body = el("tbody");
      for (const row of pool.rows) body.append(...hostRow(row));
      card.append(
        el(
          "table",
          { class: "hosts" },
          el(
            "thead",
            {},
            el(
              "tr",
              {},
              el("th", {}, "HOST"),
              el("th", {}, "HEALTH"),
              el("th", {}, "MOUNT PATH"),
              el("th", { class: "num" }, "USED / TOTAL"),
              el("th", { class: "num" }, "VOLS"),
              el("th", {}, "LAST REPORT"),
              el("th", {}, "CHANGED"),
            ),
          ),
          body,
        ),
      );
    } else {
      card.append(el("p", { class: "empty" }, "no host has reported this pool yet"));
    }
    if (pool.rows_hidden) card.append(el("p", { class: "hidden-rows" }, `${pool.rows_hidden} more healthy hosts not shown`));
    return card;
  }

  const NODE_STATE = { READY: "healthy", MAINTENANCE: "maintenance", DRAINING: "maintenance", PENDING: "pending", UNKNOWN: "unknown" };

  function nodesTable(nodes, hidden) {
    if (!nodes.length) return el("p", { class: "empty" }, "no nodes registered");
    const body = el("tbody");
    for (const node of nodes) {
      const state = NODE_STATE[node.phase] || "error";
      body.append(
        el(
          "tr",
          { class: `node state-${state}`, "data-node-id": node.id, "data-phase": node.phase },
          el("td", { class: "hostname" }, node.hostname),
          el("td", {}, badge(node.phase, state), node.live ? null : badge("SILENT", "stale")),
          el("td", {}, node.management_ip || "-"),
          el("td", { class: "num" }, String(node.pools)),
          age(node.heartbeat_at),
          el("td", { class: "reason" }, node.reason || ""),
        ),
      );
    }
    const table = el(
      "table",
      { class: "nodes-table" },
      el(
        "thead",
        {},
        el("tr", {}, el("th", {}, "HOSTNAME"), el("th", {}, "PHASE"), el("th", {}, "MANAGEMENT IP"),
          el("th", { class: "num" }, "POOLS"), el("th", {}, "LAST HEARTBEAT"), el("th", {}, "REASON")),
      ),
      body,
    );
    const box = el("div", { class: "nodes" }, table);
    if (hidden) box.append(el("p", { class: "hidden-rows" }, `${hidden} more nodes not shown`));
    return box;
  }

  function render(state) {
    const pools = document.getElementById("pools");
    const cards = state.pools.map(poolCard);
    if (!cards.length) cards.push(el("p", { class: "empty" }, "no pools"));
    if (state.pools_hidden) cards.push(el("p", { class: "hidden-rows" }, `${state.pools_hidden} more pools not shown`));
    pools.replaceChildren(...cards);
    document.getElementById("nodes").replaceChildren(nodesTable(state.nodes, state.nodes_hidden));
    const bad = state.pools.filter((p) => p.state !== "healthy").length;
    document.getElementById("summary").textContent =
      `${state.pools.length + state.pools_hidden} pools (${bad} not ready) · ` +
      `${state.nodes.length + state.nodes_hidden} nodes · replica ${state.replica} · ` +
      `updated ${new Date().toLocaleTimeString()}` + (state.listed ? "" : " · still listing etcd");
    document.body.setAttribute("data-updated", String(Date.now()));
  }

  function accept(text) {
    const message = JSON.parse(text);
    offset = message.now - Date.now() / 1000;
    render(message.state);
  }

  function link(text, state) {
    const node = document.getElementById("link");
    node.textContent = text;
    node.className = `link state-${state}`;
  }

  async function poll() {
    try {
      const response = await fetch(SNAPSHOT, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      accept(await response.text());
      link("polling", "degraded");
    } catch (error) {
      link(`unreachable (${error.message})`, "error");
    }
  }

  function startPolling() {
    if (pollTimer === null) {
      poll();
      pollTimer = setInterval(poll, POLL_MS);
    }
    setTimeout(stream, RETRY_STREAM_MS);
  }

  function stream() {
    if (source !== null) source.close();
    source = new EventSource(EVENTS, { withCredentials: true });
    source.addEventListener("state", (event) => {
      if (pollTimer !== null) {
        clearInterval(pollTimer);
        pollTimer = null;
      }
      link("live", "healthy");
      accept(event.data);
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        startPolling(); // refused (503: too many streams) or gone: poll, try again later
      } else {
        link("reconnecting", "degraded");
      }
    });
  }

  function start() {
    stream();
    setInterval(tick, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
