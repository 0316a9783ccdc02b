// The fleet console's only script: live rows from /events (Server-Sent Events). Everything
// else works without it. Text goes into the page as text (textContent), never as markup.
"use strict";

function cell(row, className, text, href) {
  const td = document.createElement("td");
  td.className = className;
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  } else {
    td.textContent = text;
  }
  row.appendChild(td);
  return td;
}

// Whether an alert passes the filter the table was rendered with.
function selected(table, alert) {
  if (table.dataset.frozen) return false;
  for (const key of ["host", "kind", "severity", "rule"]) {
    const want = table.dataset[key];
    if (want && alert[key] !== want) return false;
  }
  return true;
}

function addAlert(table, alert) {
  const body = table.tBodies[0];
  if (body.querySelector(`tr[data-alert-id="${alert.id}"]`)) return;
  const row = document.createElement("tr");
  row.dataset.alertId = String(alert.id);
  row.className = `sev-${alert.severity} fresh`;
  const time = cell(row, "time", "now");
  time.title = alert.time;
  cell(row, "host", alert.host, `/hosts/${encodeURIComponent(alert.host)}`);
  cell(row, `kind k-${alert.kind}`, alert.kind);
  cell(row, "severity", alert.severity);
  cell(row, "summary", alert.summary, `/alerts/${alert.id}`);
  body.insertBefore(row, body.firstChild);
  const count = document.getElementById("alert-count");
  if (count) count.textContent = String(Number(count.textContent) + 1);
}

function updateHost(table, host) {
  const row = Array.from(table.querySelectorAll("tr[data-host]")).find((r) => r.dataset.host === host.host);
  if (!row) { window.location.reload(); return; }
  const status = row.querySelector("td.status");
  status.textContent = host.health;
  status.className = `status ${host.health}`;
  status.title = host.problems.join("; ");
  const why = row.querySelector("td.why");
  if (why) why.textContent = host.problems.join("; ");
  for (const health of ["healthy", "degraded", "silent"]) {
    const counter = document.getElementById(`count-${health}`);
    if (counter) counter.textContent = String(table.querySelectorAll(`td.status.${health}`).length);
  }
}

function bumpHostAlerts(table, alert) {
  const row = Array.from(table.querySelectorAll("tr[data-host]")).find((r) => r.dataset.host === alert.host);
  const link = row && row.querySelector("td.alerts a");
  if (link) link.textContent = String(Number(link.textContent) + 1);
}

document.addEventListener("DOMContentLoaded", () => {
  const alerts = document.querySelector('table[data-live="alerts"]');
  const hosts = document.querySelector('table[data-live="hosts"]');
  if (!alerts && !hosts) return;
  let newest = alerts ? Number(alerts.dataset.newest || 0) : 0;
  if (alerts) {
    for (const row of alerts.querySelectorAll("tr[data-alert-id]")) newest = Math.max(newest, Number(row.dataset.alertId));
  }
  const source = new EventSource(alerts ? `/events?after=${newest}` : "/events");
  source.addEventListener("alert", (event) => {
    const alert = JSON.parse(event.data);
    if (alerts && selected(alerts, alert)) addAlert(alerts, alert);
    if (hosts) bumpHostAlerts(hosts, alert);
  });
  source.addEventListener("host", (event) => {
    if (hosts) updateHost(hosts, JSON.parse(event.data));
  });
});
