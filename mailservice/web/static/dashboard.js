// The dashboard's refresh (API.md, Dashboard): polls /dashboard/data and puts the new counts,
// chart bars and rows where the server-rendered page put the first ones. Every value is set
// with textContent or setAttribute on elements made here, never parsed as markup.
"use strict";

(function () {
  const body = document.body;
  const pollUrl = body.dataset.poll;
  if (!pollUrl) {
    return;
  }
  const seconds = Number(body.dataset.pollSeconds) || 3;
  const STATUSES = [
    "scheduled", "queued", "sending", "retrying", "sent", "failed", "expired", "canceled",
  ];
  const chart = document.getElementById("chart");
  const rows = document.querySelector("#requests tbody");
  const refreshed = document.getElementById("refreshed");
  const older = document.getElementById("older");
  const query = new URL(pollUrl, window.location.href).searchParams.get("q") || "";

  function element(tag, text, className) {
    const made = document.createElement(tag);
    if (text !== undefined) {
      made.textContent = String(text);
    }
    if (className) {
      made.className = className;
    }
    return made;
  }

  function statusClass(status) {
    // A class from the known statuses only, whatever the data says.
    return STATUSES.includes(status) ? "status status-" + status : "status";
  }

  function row(request) {
    const tr = element("tr");
    tr.dataset.id = request.request_id;
    tr.append(element("td", request.created, "time"));
    const idCell = element("td", undefined, "id");
    const link = element("a", request.request_id);
    link.href = "/dashboard/requests/" + encodeURIComponent(request.request_id);
    idCell.append(link);
    tr.append(idCell);
    tr.append(element("td", request.sender));
    tr.append(element("td", request.recipients.join(", ")));
    const statusCell = element("td");
    statusCell.append(element("span", request.status, statusClass(request.status)));
    tr.append(statusCell);
    tr.append(element("td", request.attempts, "number"));
    tr.append(element("td", request.error, "error"));
    const tagCell = element("td");
    for (const tag of request.tags) {
      tagCell.append(element("span", tag, "tag"));
    }
    tr.append(tagCell);
    return tr;
  }

  function showRows(requests) {
    if (!rows) {
      return;
    }
    if (requests.length === 0) {
      const empty = element("tr", undefined, "empty");
      const cell = element("td", query ? "No requests match this search." : "No requests.");
      cell.colSpan = 8;
      empty.append(cell);
      rows.replaceChildren(empty);
      return;
    }
    rows.replaceChildren(...requests.map(row));
  }

  function showCounts(counts) {
    for (const cell of document.querySelectorAll("[data-count]")) {
      const value = counts[cell.dataset.count];
      cell.textContent = String(typeof value === "number" ? value : 0);
    }
  }

  function showPaused(paused) {
    const box = document.getElementById("paused");
    const list = document.getElementById("paused-list");
    if (!box || !list) {
      return;
    }
    box.hidden = !paused || paused.length === 0;
    list.replaceChildren(...(paused || []).map((pause) => {
      const item = document.createElement("li");
      const who = document.createElement("strong");
      who.textContent = pause.sender;
      item.append(who, " until " + pause.until + ": " + pause.reason);
      return item;
    }));
  }

  function showChart(sends) {
    if (!chart) {
      return;
    }
    const height = Number(chart.dataset.height);
    const top = Math.max(1, ...sends.map((m) => m.sent + m.failed));
    const bars = chart.querySelectorAll("g.bar");
    sends.forEach((minute, index) => {
      const bar = bars[index];
      if (!bar) {
        return;
      }
      const sentHeight = (minute.sent / top) * height;
      const failedHeight = (minute.failed / top) * height;
      const sent = bar.querySelector("rect.sent");
      const failed = bar.querySelector("rect.failed");
      sent.setAttribute("y", (height - sentHeight).toFixed(2));
      sent.setAttribute("height", sentHeight.toFixed(2));
      failed.setAttribute("y", (height - sentHeight - failedHeight).toFixed(2));
      failed.setAttribute("height", failedHeight.toFixed(2));
      bar.querySelector("title").textContent =
        minute.minute.slice(11) + " UTC: " + minute.sent + " sent, " + minute.failed + " failed";
    });
    const total = sends.reduce((sum, m) => sum + m.sent + m.failed, 0);
    document.getElementById("chart-top").textContent = String(top);
    document.getElementById("chart-total").textContent = "(" + total + " in all)";
  }

  function showOlder(next) {
    if (!older) {
      return;
    }
    if (next) {
      const target = new URL("/dashboard", window.location.href);
      if (query) {
        target.searchParams.set("q", query);
      }
      target.searchParams.set("before", next);
      older.href = target.pathname + target.search;
      older.hidden = false;
    } else {
      older.hidden = true;
    }
  }

  function say(text) {
    if (refreshed) {
      refreshed.textContent = text;
    }
  }

  async function poll() {
    let again = true;
    try {
      const answer = await fetch(pollUrl, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (answer.status === 401) {
        say("Your session has ended: log in again to see new requests.");
        again = false;
      } else if (!answer.ok) {
        say("The service answered " + answer.status + "; trying again.");
      } else {
        const state = await answer.json();
        showCounts(state.counts);
        showPaused(state.paused);
        showChart(state.sends);
        showRows(state.requests);
        showOlder(state.next);
        say("Updated " + new Date().toISOString().slice(11, 19) + " UTC.");
      }
    } catch (error) {
      say("The service did not answer; trying again.");
    }
    if (again) {
      window.setTimeout(poll, seconds * 1000);
    }
  }

  window.setTimeout(poll, seconds * 1000);
})();
