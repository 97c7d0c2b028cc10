// The wgkex status page: polls /api/v1/status and redraws. Every value from the broker goes into the page as
// text (textContent), never as markup: worker names come from MQTT clients.
"use strict";

(function () {
	const POLL_MS = 2000;
	const HISTORY_EVERY = 15; // polls: the chart's samples change once a sample interval
	let polls = 0, haveHistory = false;
	const palette = ["#2463c7", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#e67700", "#5c940d", "#364fc7", "#a61e4d"];
	const reasons = {
		malformed: "malformed request",
		invalid_key: "invalid key",
		unknown_domain: "unknown domain",
		key_refused: "key on a key list",
		no_gateway: "no gateway online",
		no_gateway_data: "gateway without endpoint",
		store_error: "state store failed",
	};
	let peerPlot = null, peerKey = "";
	let regPlot = null;
	let nowSec = 0; // the broker's time at the last answer, Unix seconds

	function $(id) { return document.getElementById(id); }

	function el(tag, cls, text) {
		const e = document.createElement(tag);
		if (cls) e.className = cls;
		if (text !== undefined) e.textContent = String(text);
		return e;
	}

	function bytes(n) {
		const units = ["B", "KiB", "MiB", "GiB", "TiB"];
		let i = 0;
		while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
		return (i ? n.toFixed(1) : n) + " " + units[i];
	}

	function duration(s) {
		s = Math.max(0, Math.floor(s));
		const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
		if (d) return d + "d " + h + "h";
		if (h) return h + "h " + m + "m";
		if (m) return m + "m " + (s % 60) + "s";
		return s + "s";
	}

	// when is a time in short: the time of day if it is on the day of now, else the date too.
	function when(t, now) {
		const d = new Date(t), n = new Date(now);
		const hm = { hour: "numeric", minute: "2-digit" };
		if (d.toDateString() === n.toDateString()) return d.toLocaleTimeString([], hm);
		const day = { month: "short", day: "numeric" };
		if (d.getFullYear() !== n.getFullYear()) day.year = "numeric";
		return d.toLocaleString([], Object.assign(day, hm));
	}

	function fixed(x, digits) { return Number(x).toFixed(digits); }

	function cell(tr, label, cls, text) {
		const td = el("td", cls, text);
		td.setAttribute("data-label", label);
		tr.appendChild(td);
		return td;
	}

	function renderBroker(st) {
		const b = st.broker;
		$("version").textContent = b.version || "unknown";
		$("uptime").textContent = duration(b.uptime_seconds);
		$("uptime").title = "since " + new Date(b.started).toLocaleString();
		$("mqtt-clients").textContent = b.mqtt_clients < 0 ? "external" : b.mqtt_clients;
		const m = st.mqtt || { external: false, connected: true, awaiting: [] };
		const server = $("mqtt-server");
		server.textContent = !m.external ? "embedded" : m.connected ? "connected" : "down";
		server.classList.toggle("bad", !m.connected);
		server.title = m.since ? "since " + new Date(m.since).toLocaleString() : "";
		$("mqtt-down").hidden = m.connected;
		$("state-size").textContent = bytes(b.state_file_bytes);
		const gws = st.gateways || [];
		$("gateways-online").textContent = gws.filter(g => g.online).length + " / " + gws.length;
		$("updated").textContent = "updated " + new Date(b.now).toLocaleTimeString();
	}

	// renderBrokers lists the brokers on an external MQTT server; with the embedded server the list is empty and
	// the section stays hidden.
	function renderBrokers(st) {
		const bs = st.brokers || [];
		$("brokers").hidden = bs.length === 0;
		if (!bs.length) return;
		$("brokers-alive").textContent = bs.filter(b => b.alive).length + " of " + bs.length + " alive";
		const tbody = $("broker-list").tBodies[0];
		tbody.replaceChildren();
		for (const b of bs) {
			const tr = el("tr", b.alive ? "online" : "offline");
			tr.setAttribute("data-broker", b.id);
			const name = cell(tr, "Broker", "name", b.id);
			if (b.self) name.appendChild(el("span", "note", "this broker"));
			const s = cell(tr, "Status", "status", b.alive ? "alive" : "gone");
			if (b.since) s.appendChild(el("span", "since", "since " + new Date(b.since).toLocaleString()));
			tbody.appendChild(tr);
		}
	}

	function renderActivity(st) {
		const a = st.activity;
		const v1 = a.registrations.v1 || [], v2 = a.registrations.v2 || [];
		// The last entry is the running minute; the one before is the last full minute.
		const last = arr => arr.length > 1 ? arr[arr.length - 2] : 0;
		const sum = arr => arr.reduce((x, y) => x + y, 0);
		$("rate-v1").textContent = last(v1);
		$("rate-v2").textContent = last(v2);
		$("reg-hour").textContent = sum(v1) + sum(v2);
		const tbody = $("refused").tBodies[0];
		tbody.replaceChildren();
		const rs = Object.keys(a.refused || {}).sort();
		for (const r of rs) {
			const tr = el("tr");
			tr.setAttribute("data-reason", r);
			cell(tr, "Reason", "", reasons[r] || r);
			cell(tr, "Count", "num", a.refused[r]);
			tbody.appendChild(tr);
		}
		$("refused").hidden = rs.length === 0;
		$("refused-none").hidden = rs.length !== 0;
		const xs = v1.map((_, i) => a.start + i * 60);
		const data = [xs, v1, v2];
		if (typeof uPlot === "undefined") return;
		if (!regPlot) {
			regPlot = new uPlot({
				width: chartWidth("reg-chart"), height: 160,
				scales: { x: { time: true } },
				series: [{}, { label: "v1", stroke: palette[0], width: 2, points: { show: false } },
					{ label: "v2", stroke: palette[1], width: 2, points: { show: false } }],
				axes: [{ values: timeLabels }, { label: "per minute" }],
			}, data, $("reg-chart"));
		} else {
			regPlot.setData(data);
		}
	}

	// plural counts a thing: "1 peer", "2 peers", "0 peers".
	function plural(n, one, many) { return n + " " + (n === 1 ? one : (many || one + "s")); }

	// distance shows a gateway's distance from its target to one decimal: 0.0 is neutral (no sign, no colour, never
	// "-0.0" or "+0.0"); below its target (green) it is chosen first, above it (red) last.
	function distance(td, x) {
		const r = Math.round(x * 10) / 10;
		if (r === 0) {
			td.textContent = "0.0";
			return;
		}
		td.textContent = (r > 0 ? "+" : "") + r.toFixed(1);
		td.classList.add(r < 0 ? "below" : "above");
	}

	// domainsOf maps each gateway to the domains it reported, in configuration order, with its figures there. A
	// gateway the broker never heard from is listed under every domain in the JSON; here it has none.
	function domainsOf(st, seen) {
		const out = {};
		for (const d of st.domains || []) {
			for (const dg of d.gateways) {
				if (!seen.has(dg.name)) continue;
				(out[dg.name] = out[dg.name] || []).push(Object.assign({ domain: d.name }, dg));
			}
		}
		return out;
	}

	// renderDomainSummary: per domain, the handshaking peers on its online gateways, the gateways offering it and
	// the nodes sent there in the last hour.
	function renderDomainSummary(st) {
		const seen = new Set((st.gateways || []).filter(g => g.seen !== false).map(g => g.name));
		const ds = st.domains || [];
		$("domains-count").textContent = plural(ds.length, "domain");
		const tbody = $("domain-list").tBodies[0];
		tbody.replaceChildren();
		for (const d of ds) {
			const tr = el("tr");
			tr.setAttribute("data-domain", d.name);
			const reported = d.gateways.filter(dg => seen.has(dg.name));
			const serving = reported.filter(dg => dg.serving).length;
			// A long domain name may break after its underscores (on a phone), nowhere else.
			const name = cell(tr, "Domain", "name");
			d.name.split(/(?<=_)/).forEach((part, i) => {
				if (i) name.appendChild(el("wbr"));
				name.appendChild(document.createTextNode(part));
			});
			cell(tr, "Handshaking peers", "num peers", d.peers);
			const s = cell(tr, "Gateways serving", "num serving", serving + " of " + reported.length);
			if (!serving) {
				tr.classList.add("unserved");
				s.appendChild(el("span", "note", "no gateway serves it"));
			}
			cell(tr, "Assigned (v2, 1h)", "num assigned", reported.reduce((n, dg) => n + dg.assigned_last_hour, 0));
			tbody.appendChild(tr);
		}
	}

	// hostPort splits an endpoint at its last colon (the port); an IPv6 address keeps its own colons.
	function hostPort(ep) {
		const i = ep.lastIndexOf(":");
		return i < 0 ? [ep, ""] : [ep.slice(0, i), ep.slice(i)];
	}

	// domainList is a gateway's domains, compact: the domain, its handshaking peers there and the endpoint (the
	// host once above the list when every domain has the same one, then only the ports).
	function domainList(td, g, doms) {
		if (!doms.length) {
			td.appendChild(el("span", "muted", "–"));
			return;
		}
		const hosts = new Set(doms.filter(x => x.endpoint).map(x => hostPort(x.endpoint)[0]));
		const common = hosts.size === 1 && doms.every(x => x.endpoint) ? [...hosts][0] : "";
		if (common) td.appendChild(el("div", "dhost", common));
		const ul = el("ul", "domains");
		for (const x of doms) {
			const li = el("li");
			li.setAttribute("data-domain", x.domain);
			li.appendChild(el("span", "dname", x.domain));
			li.appendChild(el("span", "dpeers", x.peers < 0 ? "offline" : plural(x.peers, "peer")));
			const ep = !x.endpoint ? "no endpoint" : common ? hostPort(x.endpoint)[1] : x.endpoint;
			li.appendChild(el("span", "dep" + (x.endpoint ? "" : " muted"), ep));
			if (x.endpoint) li.title = x.endpoint;
			// An online gateway that cannot serve this domain (an interface missing, no CAP_NET_ADMIN) is not offered.
			if (g.online && !x.serving) {
				li.classList.add("not-serving");
				li.appendChild(el("span", "dnote", "not serving"));
			}
			ul.appendChild(li);
		}
		td.appendChild(ul);
	}

	// renderGateways: one row per gateway, its domains in the row.
	function renderGateways(st) {
		const gws = st.gateways || [];
		const seen = new Set(gws.filter(g => g.seen !== false).map(g => g.name));
		const doms = domainsOf(st, seen);
		const awaiting = new Set((st.mqtt && st.mqtt.awaiting) || []);
		const never = gws.filter(g => g.seen === false).length;
		$("gateways-count").textContent = gws.filter(g => g.online).length + " of " + gws.length + " online" +
			(never ? ", " + never + " never connected" : "");
		const tbody = $("gateway-list").tBodies[0];
		tbody.replaceChildren();
		if (!gws.length) {
			const tr = el("tr");
			cell(tr, "", "muted", "no gateway configured or seen").colSpan = 10;
			tbody.appendChild(tr);
			return;
		}
		for (const g of gws) {
			const mine = doms[g.name] || [];
			const unserved = g.online ? mine.filter(x => !x.serving).length : 0;
			const state = g.seen === false ? "never" : !g.online ? "offline" : unserved ? "online not-serving" : "online";
			const tr = el("tr", state);
			tr.setAttribute("data-gateway", g.name);
			const name = cell(tr, "Gateway", "name", g.name);
			if (!g.configured) name.appendChild(el("span", "note", "not configured: weighs 1"));
			cell(tr, "Location", "location", g.location || "–");
			cell(tr, "Weight", "num weight", g.weight);
			let text = "online";
			if (g.seen === false) text = "never connected";
			else if (!g.online) text = "offline";
			else if (unserved === mine.length) text = "online, not serving";
			else if (unserved) text = "online, not serving " + unserved + " of " + plural(mine.length, "domain");
			const s = cell(tr, "Status", "status", text);
			if (g.seen === false) s.appendChild(el("span", "note", "configured, never seen"));
			if (g.online && awaiting.has(g.name)) s.appendChild(el("span", "note", "not reconnected yet"));
			if (g.since) s.appendChild(el("span", "since", "since " + when(g.since, st.broker.now)));
			cell(tr, "Handshaking peers", "num peers", g.online ? g.peers : "–");
			cell(tr, "Share", "num share", fixed(g.share * 100, 1) + " %");
			cell(tr, "Target", "num target", g.online ? fixed(g.target, 1) : "–");
			const dist = cell(tr, "Distance", "num distance", "–");
			if (g.online) distance(dist, g.distance);
			cell(tr, "Assigned 1h", "num assigned", g.assigned_last_hour);
			domainList(cell(tr, "Domains", "domains"), g, mine);
			tbody.appendChild(tr);
		}
	}

	function chartWidth(id) { return Math.max(240, $(id).clientWidth || 600); }

	// The peer chart's time axis: its ticks as the labels show them, kept on the chart's element for the tests.
	function timeLabels(u, splits) {
		const span = u.scales.x.max - u.scales.x.min;
		const labels = splits.map(t => {
			const d = new Date(t * 1000);
			return span > 86400 * 1.5 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) :
				d.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
		});
		const box = u.root.parentNode;
		if (box) {
			box.dataset.xTicks = splits.join(" ");
			box.dataset.xLabels = labels.join("|");
		}
		return labels;
	}

	// peerRange is the chart's time window, from the samples themselves: it ends now and spans an hour at least.
	// (uPlot's own range for a single time is 1000 days when times are seconds: the axis ran from 2027 to 2029.)
	function peerRange(u) {
		const xs = u.data[0] || [];
		const end = Math.max(nowSec || Date.now() / 1000, xs.length ? xs[xs.length - 1] : 0);
		return [Math.min(xs.length ? xs[0] : end, end - 3600), end];
	}

	function renderHistory(st) {
		const h = st.peer_history;
		if (!h) return; // not asked for this time
		const names = Object.keys(h.workers).sort();
		haveHistory = h.times.length > 0;
		$("history-empty").hidden = haveHistory;
		$("peer-chart").dataset.samples = h.times.length;
		if (!haveHistory && peerPlot) {
			peerPlot.destroy();
			peerPlot = null;
			peerKey = "";
		}
		if (typeof uPlot === "undefined" || !haveHistory) return;
		const data = [h.times].concat(names.map(n => h.workers[n]));
		const key = names.join("\n");
		if (peerPlot && key === peerKey) {
			peerPlot.setData(data);
			return;
		}
		if (peerPlot) peerPlot.destroy();
		peerKey = key;
		peerPlot = new uPlot({
			width: chartWidth("peer-chart"), height: 260,
			scales: { x: { time: true, range: peerRange } },
			series: [{}].concat(names.map((n, i) => ({
				label: n, stroke: palette[i % palette.length], width: 2, spanGaps: false,
				points: { show: (u, si, i0, i1) => i1 - i0 < 60, size: 6 },
			}))),
			axes: [{ values: timeLabels }, { label: "peers" }],
		}, data, $("peer-chart"));
	}

	function when(t) { return t ? new Date(t).toLocaleString() : "–"; }

	// The key search (GET /api/v1/key): only on a page with credentials, where the broker answers it.
	async function lookUp(ev) {
		ev.preventDefault();
		const key = $("key-input").value.trim(), msg = $("key-message"), table = $("key-result");
		const tbody = table.querySelector("tbody");
		tbody.replaceChildren();
		table.hidden = true;
		msg.hidden = false;
		if (!key) { msg.textContent = "enter a key"; return; }
		msg.textContent = "looking up…";
		try {
			const resp = await fetch("/api/v1/key?key=" + encodeURIComponent(key), { cache: "no-store", credentials: "same-origin" });
			const body = await resp.json();
			if (!resp.ok) { msg.textContent = (body.error && body.error.message) || ("error " + resp.status); return; }
			if (!body.domains.length) { msg.textContent = "not stored in any domain"; return; }
			for (const d of body.domains) {
				const tr = el("tr", d.stored ? "" : "offline");
				cell(tr, "Domain", "", d.domain);
				cell(tr, "Stored", "", d.stored ? "yes" : "no");
				cell(tr, "First seen", "", when(d.first_seen));
				cell(tr, "Last seen", "", when(d.last_seen));
				cell(tr, "Gateway chosen", "", d.gateway || "–");
				cell(tr, "Gateways that have it", "", (d.gateways || []).join(", ") || "–");
				cell(tr, "Revoked", "", when(d.revoked_at));
				tbody.appendChild(tr);
			}
			msg.hidden = true;
			table.hidden = false;
		} catch (e) {
			msg.textContent = "the broker does not answer";
		}
	}

	function render(st) {
		$("key-search").hidden = !st.key_search;
		nowSec = Date.parse(st.broker.now) / 1000;
		renderBroker(st);
		renderBrokers(st);
		renderActivity(st);
		renderDomainSummary(st);
		renderGateways(st);
		renderHistory(st);
	}

	async function poll() {
		try {
			const full = polls++ % HISTORY_EVERY === 0 || !haveHistory;
			const url = full ? "/api/v1/status" : "/api/v1/status?history=0";
			const resp = await fetch(url, { cache: "no-store", credentials: "same-origin" });
			if (!resp.ok) throw new Error("status " + resp.status);
			render(await resp.json());
			$("error").hidden = true;
		} catch (e) {
			$("error").hidden = false;
		}
		setTimeout(poll, POLL_MS);
	}

	window.addEventListener("resize", function () {
		if (peerPlot) peerPlot.setSize({ width: chartWidth("peer-chart"), height: 260 });
		if (regPlot) regPlot.setSize({ width: chartWidth("reg-chart"), height: 160 });
	});
	$("key-form").addEventListener("submit", lookUp);
	poll();
})();
