// A small, safe Markdown renderer for model answers.
//
// Safety: every piece of source text is HTML-escaped before any markup is added, and the only markup
// added is a fixed set of tags; link targets must be http(s) or mailto URLs. The page's
// Content-Security-Policy forbids inline scripts as a second line of defence.
//
// Supported: fenced code blocks (``` or ~~~, also unclosed while streaming), headings, paragraphs with
// line breaks, bullet and numbered lists (nested by indentation), block quotes, horizontal rules, simple
// tables, inline code, bold, italic, strikethrough and [links](https://...).
(function () {
  "use strict";

  var ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return ESCAPES[c];
    });
  }

  var SAFE_URL = /^(https?:\/\/|mailto:)[^\s"'<>]*$/i;

  // Inline markup of one block's text (raw, unescaped source).
  function inline(raw) {
    var slots = [];
    function keep(html) {
      slots.push(html);
      return "\u0000" + (slots.length - 1) + "\u0000";
    }
    var s = String(raw).replace(/\u0000/g, "");
    // Code spans first: nothing inside them is markup.
    s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, function (_, ticks, code) {
      return keep("<code>" + escapeHtml(code.trim() === "" ? code : code.replace(/^ (.*) $/, "$1")) + "</code>");
    });
    s = escapeHtml(s);
    // Links: [text](url) with a safe scheme; otherwise the text stays plain.
    s = s.replace(/\[([^\]\n]+)\]\(([^()\s]+)\)/g, function (whole, text, url) {
      var target = url.replace(/&amp;/g, "&");
      if (!SAFE_URL.test(target)) {
        return text;
      }
      return keep(
        '<a href="' + escapeHtml(target) + '" target="_blank" rel="noopener noreferrer">' + emphasis(text) + "</a>"
      );
    });
    s = emphasis(s);
    return s.replace(/\u0000(\d+)\u0000/g, function (_, i) {
      return slots[Number(i)];
    });
  }

  // Bold, italic, strikethrough on already escaped text.
  function emphasis(s) {
    return s
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
      .replace(/\*(?=[^\s*])([^*]*?[^\s*])\*/g, "<em>$1</em>")
      .replace(/\*([^\s*])\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
  }

  var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
  var HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  var RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  var QUOTE = /^ {0,3}> ?(.*)$/;
  var ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  var TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

  function isBlockStart(line, next) {
    return (
      FENCE.test(line) ||
      HEADING.test(line) ||
      RULE.test(line) ||
      QUOTE.test(line) ||
      ITEM.test(line) ||
      (line.indexOf("|") !== -1 && next !== undefined && TABLE_SEP.test(next))
    );
  }

  function indentOf(line) {
    return line.match(/^\s*/)[0].replace(/\t/g, "    ").length;
  }

  function splitRow(line) {
    var cells = line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|");
    return cells.map(function (c) {
      return c.trim();
    });
  }

  function renderList(lines, start) {
    var first = lines[start].match(ITEM);
    var baseIndent = indentOf(first[1]);
    var ordered = /\d/.test(first[2]);
    var items = [];
    var i = start;
    while (i < lines.length) {
      var line = lines[i];
      var m = line.match(ITEM);
      if (m && indentOf(m[1]) === baseIndent && /\d/.test(m[2]) === ordered) {
        items.push([m[3]]);
        i++;
        continue;
      }
      if (line.trim() === "") {
        // A blank line ends the list unless the next line continues it (indented or another item).
        var next = lines[i + 1];
        if (next !== undefined && (indentOf(next) > baseIndent || (ITEM.test(next) && indentOf(next) === baseIndent))) {
          items[items.length - 1].push("");
          i++;
          continue;
        }
        break;
      }
      if (indentOf(line) > baseIndent) {
        items[items.length - 1].push(line.replace(/^\s+/, function (ws) {
          return ws.length > baseIndent + 2 ? ws.slice(baseIndent + 2) : "";
        }));
        i++;
        continue;
      }
      if (m || isBlockStart(line, lines[i + 1])) {
        break;
      }
      items[items.length - 1].push(line); // lazy continuation of the item's paragraph
      i++;
    }
    var html = "";
    items.forEach(function (itemLines) {
      var body = blocks(itemLines);
      var single = body.match(/^<p>([\s\S]*?)<\/p>([\s\S]*)$/);
      if (single && single[1].indexOf("<p>") === -1) {
        body = single[1] + single[2];
      }
      html += "<li>" + body + "</li>";
    });
    var startNumber = ordered ? parseInt(first[2], 10) : 1;
    var open = ordered ? (startNumber !== 1 ? '<ol start="' + startNumber + '">' : "<ol>") : "<ul>";
    return { html: open + html + (ordered ? "</ol>" : "</ul>"), next: i };
  }

  function renderTable(lines, start) {
    var head = splitRow(lines[start]);
    var i = start + 2;
    var rows = [];
    while (i < lines.length && lines[i].indexOf("|") !== -1 && lines[i].trim() !== "") {
      rows.push(splitRow(lines[i]));
      i++;
    }
    var html = "<table><thead><tr>";
    head.forEach(function (cell) {
      html += "<th>" + inline(cell) + "</th>";
    });
    html += "</tr></thead><tbody>";
    rows.forEach(function (row) {
      html += "<tr>";
      for (var c = 0; c < head.length; c++) {
        html += "<td>" + inline(row[c] || "") + "</td>";
      }
      html += "</tr>";
    });
    return { html: html + "</tbody></table>", next: i };
  }

  function blocks(lines) {
    var out = "";
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      var m;
      if (line.trim() === "") {
        i++;
        continue;
      }
      if ((m = line.match(FENCE))) {
        var fence = m[1];
        var lang = m[2];
        var code = [];
        i++;
        while (i < lines.length && !(lines[i].trim().indexOf(fence) === 0 && lines[i].trim().replace(/[`~]/g, "") === "")) {
          code.push(lines[i]);
          i++;
        }
        i++; // the closing fence (or past the end while the answer is still streaming)
        var cls = lang ? ' class="language-' + escapeHtml(lang) + '"' : "";
        out += "<pre><code" + cls + ">" + escapeHtml(code.join("\n")) + "</code></pre>";
        continue;
      }
      if ((m = line.match(HEADING))) {
        var level = m[1].length;
        out += "<h" + level + ">" + inline(m[2]) + "</h" + level + ">";
        i++;
        continue;
      }
      if (RULE.test(line)) {
        out += "<hr>";
        i++;
        continue;
      }
      if (QUOTE.test(line)) {
        var quoted = [];
        while (i < lines.length && (m = lines[i].match(QUOTE))) {
          quoted.push(m[1]);
          i++;
        }
        out += "<blockquote>" + blocks(quoted) + "</blockquote>";
        continue;
      }
      if (ITEM.test(line)) {
        var list = renderList(lines, i);
        out += list.html;
        i = list.next;
        continue;
      }
      if (line.indexOf("|") !== -1 && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
        var table = renderTable(lines, i);
        out += table.html;
        i = table.next;
        continue;
      }
      var para = [line];
      i++;
      while (i < lines.length && lines[i].trim() !== "" && !isBlockStart(lines[i], lines[i + 1])) {
        para.push(lines[i]);
        i++;
      }
      out += "<p>" + para.map(inline).join("<br>") + "</p>";
    }
    return out;
  }

  function render(text) {
    return blocks(String(text).replace(/\r\n?/g, "\n").split("\n"));
  }

  window.exoMarkdown = { render: render, escapeHtml: escapeHtml };
})();
