// exo web chat: streams answers from /v1/chat/completions and shows the cluster from /v1/topology.
(function () {
  "use strict";

  var TOPOLOGY_INTERVAL_MS = 2000;
  var COLORS = ["#4f7cff", "#f0883e", "#2fb67c", "#c558d6", "#e5534b", "#d4a72c", "#39c5cf", "#8b949e"];

  var el = function (id) {
    return document.getElementById(id);
  };
  var ui = {
    model: el("model"),
    temperature: el("temperature"),
    newChat: el("new-chat"),
    status: el("status"),
    messages: el("messages"),
    empty: el("empty"),
    form: el("composer"),
    input: el("input"),
    send: el("send"),
    stop: el("stop"),
    keyBar: el("key-bar"),
    keyInput: el("key-input"),
    keySave: el("key-save"),
    topoSummary: el("topology-summary"),
    planBar: el("plan-bar"),
    graph: el("graph"),
    nodes: el("nodes"),
    connections: el("connections"),
    topoError: el("topology-error"),
  };

  var history = []; // {role, content} sent with each request
  var controller = null; // AbortController of the answer being streamed
  var apiKey = localStorage.getItem("exo-api-key") || "";
  var savedTemperature = localStorage.getItem("exo-temperature");
  if (savedTemperature !== null) {
    ui.temperature.value = savedTemperature;
  }
  ui.temperature.addEventListener("change", function () {
    localStorage.setItem("exo-temperature", ui.temperature.value);
  });

  function temperature() {
    var t = parseFloat(ui.temperature.value);
    return isFinite(t) && t >= 0 && t <= 2 ? t : undefined; // out of range: the server's default
  }

  function headers() {
    var h = { "Content-Type": "application/json" };
    if (apiKey) {
      h.Authorization = "Bearer " + apiKey;
    }
    return h;
  }

  function node(tag, className, text) {
    var e = document.createElement(tag);
    if (className) {
      e.className = className;
    }
    if (text !== undefined) {
      e.textContent = text;
    }
    return e;
  }

  function setStatus(text, isError) {
    ui.status.textContent = text || "";
    ui.status.classList.toggle("error", !!isError);
  }

  async function errorMessage(response) {
    try {
      var body = await response.json();
      if (body && body.error && body.error.message) {
        return body.error.message;
      }
    } catch (e) {
      /* not JSON */
    }
    return "HTTP " + response.status;
  }

  function needKey(message) {
    ui.keyBar.hidden = false;
    setStatus(message, true);
    ui.keyInput.focus();
  }

  // ---- models -------------------------------------------------------------------------------------
  async function loadModels() {
    try {
      var response = await fetch("/v1/models", { headers: headers() });
      if (response.status === 401) {
        needKey(await errorMessage(response));
        return;
      }
      if (!response.ok) {
        setStatus("models: " + (await errorMessage(response)), true);
        return;
      }
      var body = await response.json();
      var previous = ui.model.value;
      ui.model.textContent = "";
      body.data.forEach(function (m) {
        var option = node("option", "", m.id);
        option.value = m.id;
        ui.model.appendChild(option);
      });
      if (previous && body.data.some(function (m) { return m.id === previous; })) {
        ui.model.value = previous;
      }
      ui.keyBar.hidden = true;
      setStatus("");
    } catch (e) {
      setStatus("cannot reach the node: " + e.message, true);
    }
  }

  // ---- chat ---------------------------------------------------------------------------------------
  function addMessage(role, text) {
    ui.empty.hidden = true;
    var wrap = node("div", "message " + role);
    wrap.dataset.role = role;
    var bubble = node("div", "bubble");
    if (role === "user") {
      bubble.textContent = text;
    } else {
      bubble.innerHTML = window.exoMarkdown.render(text);
    }
    wrap.appendChild(bubble);
    var stats = node("div", "stats");
    wrap.appendChild(stats);
    ui.messages.appendChild(wrap);
    ui.messages.scrollTop = ui.messages.scrollHeight;
    return { wrap: wrap, bubble: bubble, stats: stats };
  }

  function formatStats(s) {
    var parts = [];
    if (s.ttft !== null) {
      parts.push("TTFT " + Math.round(s.ttft) + " ms");
    }
    if (s.tokensPerSecond !== null) {
      parts.push(s.tokensPerSecond.toFixed(1) + " tok/s");
    }
    parts.push(s.tokens + (s.tokens === 1 ? " token" : " tokens"));
    if (s.reason) {
      parts.push(s.reason);
    }
    return parts.join(" · ");
  }

  // Reads a server-sent event stream, calling onData with each event's data field.
  async function readEvents(response, onData) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) {
        break;
      }
      buffer += decoder.decode(chunk.value, { stream: true });
      var events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (var i = 0; i < events.length; i++) {
        var data = events[i]
          .split(/\r?\n/)
          .filter(function (line) { return line.indexOf("data:") === 0; })
          .map(function (line) { return line.slice(5).replace(/^ /, ""); })
          .join("\n");
        if (data && onData(data) === false) {
          return;
        }
      }
    }
  }

  async function send(text) {
    var model = ui.model.value;
    history.push({ role: "user", content: text });
    addMessage("user", text);
    var answer = addMessage("assistant", "");
    answer.wrap.dataset.state = "waiting";
    answer.bubble.classList.add("pending");
    var content = "";
    var stats = { ttft: null, tokensPerSecond: null, tokens: 0, reason: "" };
    var started = performance.now();
    var firstTokenAt = null;
    var renderQueued = false;

    function render() {
      renderQueued = false;
      answer.bubble.innerHTML = window.exoMarkdown.render(content);
      answer.stats.textContent = formatStats(stats);
      ui.messages.scrollTop = ui.messages.scrollHeight;
    }
    function queueRender() {
      if (!renderQueued) {
        renderQueued = true;
        requestAnimationFrame(render);
      }
    }
    function updateSpeed() {
      var now = performance.now();
      if (firstTokenAt !== null && stats.tokens > 1 && now - firstTokenAt >= 20) {
        stats.tokensPerSecond = ((stats.tokens - 1) * 1000) / (now - firstTokenAt);
      }
    }

    controller = new AbortController();
    setBusy(true);
    try {
      var response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({
          model: model || undefined,
          messages: history,
          temperature: temperature(),
          stream: true,
          stream_options: { include_usage: true },
        }),
        signal: controller.signal,
      });
      if (!response.ok) {
        var message = await errorMessage(response);
        if (response.status === 401) {
          needKey(message);
        }
        throw new Error(message);
      }
      answer.wrap.dataset.state = "streaming";
      await readEvents(response, function (data) {
        if (data === "[DONE]") {
          return false;
        }
        var event = JSON.parse(data);
        if (event.error) {
          throw new Error(event.error.message || "the node reported an error");
        }
        if (event.usage) {
          stats.tokens = event.usage.completion_tokens;
          updateSpeed();
        }
        var choice = event.choices && event.choices[0];
        if (!choice) {
          return true;
        }
        var delta = (choice.delta && choice.delta.content) || "";
        if (delta) {
          if (firstTokenAt === null) {
            firstTokenAt = performance.now();
            stats.ttft = firstTokenAt - started;
            answer.bubble.classList.remove("pending");
          }
          content += delta;
          stats.tokens += 1;
          updateSpeed();
          queueRender();
        }
        if (choice.finish_reason) {
          stats.reason = choice.finish_reason === "length" ? "stopped: length limit" : "done";
        }
        return true;
      });
      answer.wrap.dataset.state = "done";
    } catch (e) {
      if (e.name === "AbortError") {
        stats.reason = "stopped";
        answer.wrap.dataset.state = "stopped";
      } else {
        stats.reason = "";
        answer.wrap.dataset.state = "error";
        var error = node("div", "error-text", e.message);
        answer.wrap.insertBefore(error, answer.stats);
      }
    } finally {
      if (controller) {
        controller.abort(); // no-op after a complete answer; releases the connection after an error
      }
      controller = null;
      setBusy(false);
      answer.bubble.classList.remove("pending");
      render();
      if (content) {
        history.push({ role: "assistant", content: content });
      } else {
        history.pop(); // nothing came back: let the user send the question again
      }
    }
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.input.disabled = busy;
    ui.model.disabled = busy;
    if (!busy) {
      ui.input.focus();
    }
  }

  ui.form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = ui.input.value.trim();
    if (!text || controller) {
      return;
    }
    ui.input.value = "";
    send(text);
  });
  ui.input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", function () {
    if (controller) {
      controller.abort(); // closes the connection: the node cancels the request on every node
    }
  });
  ui.newChat.addEventListener("click", function () {
    if (controller) {
      controller.abort();
    }
    history = [];
    ui.messages.querySelectorAll(".message").forEach(function (m) { m.remove(); });
    ui.empty.hidden = false;
    ui.input.focus();
  });
  ui.keySave.addEventListener("click", function () {
    apiKey = ui.keyInput.value.trim();
    localStorage.setItem("exo-api-key", apiKey);
    loadModels();
    pollTopology();
  });

  // ---- topology -----------------------------------------------------------------------------------
  function shortId(id) {
    return id.length > 14 ? id.slice(0, 8) + "…" : id;
  }

  function formatMemory(mb) {
    if (typeof mb !== "number") {
      return "";
    }
    return mb >= 1024 ? (mb / 1024).toFixed(1) + " GB" : mb + " MB";
  }

  function renderTopology(topo) {
    var nodes = Array.isArray(topo.nodes) ? topo.nodes : [];
    var connections = Array.isArray(topo.connections) ? topo.connections : [];
    var plan = topo.plan || null;
    var shards = plan && Array.isArray(plan.shards) ? plan.shards : [];
    var color = {};
    nodes.forEach(function (n, i) {
      color[n.id] = COLORS[i % COLORS.length];
    });
    shards.forEach(function (s) {
      if (!(s.node_id in color)) {
        color[s.node_id] = COLORS[Object.keys(color).length % COLORS.length];
      }
    });

    var totalMemory = nodes.reduce(function (sum, n) { return sum + (n.memory_mb || 0); }, 0);
    ui.topoSummary.textContent =
      nodes.length + (nodes.length === 1 ? " node" : " nodes") +
      (totalMemory ? " · " + formatMemory(totalMemory) : "") +
      (plan && plan.model ? " · " + plan.model : "");

    // Layer plan: one segment per shard, as wide as its layer count.
    ui.planBar.textContent = "";
    shards.forEach(function (s) {
      var count = s.last_layer - s.first_layer + 1;
      var seg = node("div", "segment", s.first_layer + "–" + s.last_layer);
      seg.style.flexGrow = String(Math.max(count, 1));
      seg.style.background = color[s.node_id];
      seg.title = s.node_id + ": layers " + s.first_layer + "–" + s.last_layer;
      ui.planBar.appendChild(seg);
    });
    ui.planBar.hidden = shards.length === 0;

    // Nodes.
    ui.nodes.textContent = "";
    nodes.forEach(function (n) {
      var item = node("li", "node-card");
      item.dataset.nodeId = n.id;
      var title = node("div", "node-title");
      var dot = node("span", "dot");
      dot.style.background = color[n.id];
      title.appendChild(dot);
      title.appendChild(node("span", "node-id", shortId(n.id)));
      title.title = n.id;
      if (n.is_self || n.id === topo.node_id) {
        title.appendChild(node("span", "badge", "this node"));
      }
      item.appendChild(title);
      var device = [n.model, n.chip].filter(Boolean).join(" · ");
      if (device) {
        item.appendChild(node("div", "node-detail", device));
      }
      var facts = [];
      if (n.memory_mb !== undefined) {
        facts.push(formatMemory(n.memory_mb));
      }
      if (n.flops && typeof n.flops.fp32 === "number") {
        facts.push(n.flops.fp32.toFixed(2) + " TFLOPS fp32");
      }
      if (n.engine) {
        facts.push(n.engine);
      }
      if (facts.length) {
        item.appendChild(node("div", "node-detail", facts.join(" · ")));
      }
      var mine = shards.filter(function (s) { return s.node_id === n.id; });
      var layers = mine.length
        ? mine.map(function (s) { return "layers " + s.first_layer + "–" + s.last_layer; }).join(", ")
        : "no layers";
      item.appendChild(node("div", "node-layers", layers));
      ui.nodes.appendChild(item);
    });

    // Connections.
    ui.connections.textContent = "";
    connections.forEach(function (c) {
      ui.connections.appendChild(node("li", "", shortId(c.a) + " ↔ " + shortId(c.b)));
    });
    if (!connections.length) {
      ui.connections.appendChild(node("li", "muted", nodes.length > 1 ? "none" : "single node"));
    }
    drawGraph(nodes, connections, color);
  }

  // Nodes on a circle, a line for each direct connection.
  function drawGraph(nodes, connections, color) {
    var svgNS = "http://www.w3.org/2000/svg";
    var svg = ui.graph;
    while (svg.firstChild) {
      svg.removeChild(svg.firstChild);
    }
    var size = 200;
    var center = size / 2;
    var radius = nodes.length > 1 ? 62 : 0;
    var position = {};
    nodes.forEach(function (n, i) {
      var angle = (2 * Math.PI * i) / Math.max(nodes.length, 1) - Math.PI / 2;
      position[n.id] = { x: center + radius * Math.cos(angle), y: center + radius * Math.sin(angle) };
    });
    connections.forEach(function (c) {
      var a = position[c.a];
      var b = position[c.b];
      if (!a || !b) {
        return;
      }
      var line = document.createElementNS(svgNS, "line");
      line.setAttribute("x1", a.x);
      line.setAttribute("y1", a.y);
      line.setAttribute("x2", b.x);
      line.setAttribute("y2", b.y);
      line.setAttribute("class", "edge");
      svg.appendChild(line);
    });
    nodes.forEach(function (n) {
      var p = position[n.id];
      var circle = document.createElementNS(svgNS, "circle");
      circle.setAttribute("cx", p.x);
      circle.setAttribute("cy", p.y);
      circle.setAttribute("r", 16);
      circle.setAttribute("fill", color[n.id]);
      svg.appendChild(circle);
      var label = document.createElementNS(svgNS, "text");
      label.setAttribute("x", p.x);
      label.setAttribute("y", p.y + 32);
      label.setAttribute("class", "graph-label");
      label.textContent = shortId(n.id);
      svg.appendChild(label);
    });
    svg.toggleAttribute("hidden", nodes.length === 0); // an SVG element has no .hidden property
  }

  var topologyTimer = null;
  async function pollTopology() {
    clearTimeout(topologyTimer);
    try {
      var response = await fetch("/v1/topology", { headers: headers() });
      if (response.ok) {
        renderTopology(await response.json());
        ui.topoError.textContent = "";
      } else {
        ui.topoError.textContent = "topology: " + (await errorMessage(response));
      }
    } catch (e) {
      ui.topoError.textContent = "topology: cannot reach the node (" + e.message + ")";
    }
    topologyTimer = setTimeout(pollTopology, TOPOLOGY_INTERVAL_MS);
  }

  loadModels();
  pollTopology();
  ui.input.focus();
})();
