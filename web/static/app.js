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
				axes: [{}, { label: "per minute" }],
			}, data, $("reg-chart"));
		} else {
			regPlot.setData(data);
		}
	}

	function renderDomains(st) {
		const gws = {};
		for (const g of st.gateways || []) gws[g.name] = g;
		const awaiting = new Set((st.mqtt && st.mqtt.awaiting) || []);
		const box = $("domains");
		box.replaceChildren();
		for (const d of st.domains || []) {
			const sec = el("section", "card domain");
			sec.setAttribute("data-domain", d.name);
			const h = el("h2", "", d.name + " ");
			h.appendChild(el("span", "peers-total", d.peers + " peers"));
			sec.appendChild(h);
			if (!d.gateways.length) {
				sec.appendChild(el("p", "muted", "no gateway serves this domain"));
				box.appendChild(sec);
				continue;
			}
			const wrap = el("div", "table-wrap");
			const table = el("table", "gateways");
			const head = el("tr");
			for (const [t, c] of [["Gateway", ""], ["Location", ""], ["Weight", "num"], ["Status", ""], ["Peers", "num"],
				["Share", "num"], ["Target", "num"], ["Distance", "num"], ["Assigned 1h", "num"], ["Endpoint", ""]]) {
				head.appendChild(el("th", c, t));
			}
			const thead = el("thead");
			thead.appendChild(head);
			table.appendChild(thead);
			const tbody = el("tbody");
			for (const dg of d.gateways) {
				const g = gws[dg.name] || { name: dg.name };
				const tr = el("tr", g.online ? "online" : "offline");
				if (g.online && !dg.serving) tr.classList.add("not-serving");
				tr.setAttribute("data-gateway", dg.name);
				cell(tr, "Gateway", "name", dg.name);
				cell(tr, "Location", "location", g.location || "–");
				cell(tr, "Weight", "num weight", g.weight);
				// An online gateway that cannot serve this domain (an interface missing, no CAP_NET_ADMIN) is not offered.
				const s = cell(tr, "Status", "status", g.online ? (dg.serving ? "online" : "online, not serving") : "offline");
				if (g.online && awaiting.has(dg.name)) s.appendChild(el("span", "note", "not reconnected yet"));
				if (g.since) {
					const since = new Date(g.since);
					const sp = el("span", "since", "since " + since.toLocaleString());
					s.appendChild(sp);
				}
				cell(tr, "Peers", "num peers", dg.peers < 0 ? "–" : dg.peers);
				cell(tr, "Share", "num share", fixed(g.share * 100, 1) + " %");
				cell(tr, "Target", "num target", g.online ? fixed(g.target, 1) : "–");
				const dist = cell(tr, "Distance", "num distance", g.online ? (g.distance > 0 ? "+" : "") + fixed(g.distance, 1) : "–");
				if (g.online) dist.classList.add(g.distance < 0 ? "below" : "above");
				cell(tr, "Assigned 1h", "num assigned", dg.assigned_last_hour);
				cell(tr, "Endpoint", "endpoint", dg.endpoint || "–");
				tbody.appendChild(tr);
			}
			table.appendChild(tbody);
			wrap.appendChild(table);
			sec.appendChild(wrap);
			box.appendChild(sec);
		}
	}

	function chartWidth(id) { return Math.max(240, $(id).clientWidth || 600); }

	function renderHistory(st) {
		const h = st.peer_history;
		if (!h) return; // not asked for this time
		const names = Object.keys(h.workers).sort();
		haveHistory = h.times.length > 0;
		$("history-empty").hidden = haveHistory;
		if (typeof uPlot === "undefined" || h.times.length === 0) return;
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
			scales: { x: { time: true } },
			series: [{}].concat(names.map((n, i) => ({ label: n, stroke: palette[i % palette.length], width: 2, spanGaps: false }))),
			axes: [{}, { label: "peers" }],
		}, data, $("peer-chart"));
	}

	function render(st) {
		renderBroker(st);
		renderBrokers(st);
		renderActivity(st);
		renderDomains(st);
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
	poll();
})();
