// Galleries and the review list, drawn from the JSON block #report-data.
// Every text from the data goes through textContent, never innerHTML.
(function () {
  "use strict";
  var node = document.getElementById("report-data");
  if (!node) return;
  var data = JSON.parse(node.textContent);
  var classes = data.classes || {};
  var pageSize = data.pageSize || 48;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function nameOf(id) { return (classes[id] && classes[id].name) || id; }
  function colourOf(id) { return (classes[id] && classes[id].colour) || "#999"; }
  function pct(c) { return (c === null || c === undefined) ? "" : (100 * c).toFixed(1) + " %"; }

  function photoCard(item, classId) {
    var fig = el("figure", "photo");
    fig.setAttribute("data-photo", item.i);
    var frame = el("a", "frame");
    if (item.u) { frame.href = item.u; frame.target = "_blank"; frame.rel = "noopener"; }
    if (item.t) {
      var img = el("img");
      img.loading = "lazy";
      img.alt = item.n || "";
      img.src = item.t;
      frame.appendChild(img);
    } else {
      frame.appendChild(el("span", "noimg", "no preview"));
    }
    fig.appendChild(frame);
    var cap = el("figcaption");
    if (item.c !== null && item.c !== undefined) {
      cap.appendChild(el("span", "conf", pct(item.c)));
      var bar = el("span", "confbar");
      var fill = el("i");
      fill.style.width = Math.max(0, Math.min(100, 100 * item.c)) + "%";
      fill.style.background = colourOf(classId);
      bar.appendChild(fill);
      cap.appendChild(bar);
    }
    cap.appendChild(el("span", "title", item.n || ""));
    var meta = [item.o, item.d].filter(function (x) { return x; }).join(" · ");
    if (meta) cap.appendChild(el("span", "meta", meta));
    if (item.g && classId && classes[classId]) {
      if (item.g === classId) cap.appendChild(el("span", "gold-ok", "✓ gold label"));
      else cap.appendChild(el("span", "gold-bad", "✗ gold: " + nameOf(item.g)));
    }
    if (item.x) cap.appendChild(el("span", "detail", item.x));
    fig.appendChild(cap);
    fig.title = item.n || "";
    return fig;
  }

  function pager(total, state, redraw) {
    var bar = el("div", "toolbar pager");
    var pages = Math.max(1, Math.ceil(total / pageSize));
    var prev = el("button", "prev", "‹ previous");
    var next = el("button", "next", "next ›");
    prev.disabled = state.page <= 0;
    next.disabled = state.page >= pages - 1;
    prev.onclick = function () { state.page -= 1; redraw(); };
    next.onclick = function () { state.page += 1; redraw(); };
    bar.appendChild(prev);
    bar.appendChild(el("span", "page-of", "page " + (state.page + 1) + " of " + pages));
    bar.appendChild(next);
    return bar;
  }

  // ---------------------------------------------------------------- galleries
  var galleryRoot = document.getElementById("gallery-app");
  var groups = data.gallery || [];
  if (galleryRoot && groups.length) {
    var state = { group: 0, page: 0, order: "most" };
    var tabs = el("div", "tabs");
    groups.forEach(function (g, i) {
      var b = el("button", "", g.name + " (" + g.total + ")");
      b.style.borderLeft = "6px solid " + g.colour;
      b.onclick = function () { state.group = i; state.page = 0; draw(); };
      tabs.appendChild(b);
    });
    var tools = el("div", "toolbar");
    var order = el("select");
    [["most", "most confident first"], ["least", "least confident first"]].forEach(function (o) {
      var opt = el("option", "", o[1]);
      opt.value = o[0];
      order.appendChild(opt);
    });
    order.onchange = function () { state.order = order.value; state.page = 0; draw(); };
    tools.appendChild(el("label", "", "Order: "));
    tools.appendChild(order);
    var info = el("span", "note");
    tools.appendChild(info);
    var top = el("div");
    var grid = el("div", "grid");
    var bottom = el("div");
    galleryRoot.appendChild(tabs);
    galleryRoot.appendChild(tools);
    galleryRoot.appendChild(top);
    galleryRoot.appendChild(grid);
    galleryRoot.appendChild(bottom);

    var draw = function () {
      var g = groups[state.group];
      Array.prototype.forEach.call(tabs.children, function (b, i) {
        b.className = i === state.group ? "active" : "";
      });
      var items = state.order === "most" ? g.items : g.items.slice().reverse();
      var start = state.page * pageSize;
      grid.textContent = "";
      grid.setAttribute("data-class", g.id);
      items.slice(start, start + pageSize).forEach(function (item) {
        grid.appendChild(photoCard(item, g.id));
      });
      info.textContent = g.items.length < g.total
        ? "showing the " + g.items.length + " most and least confident of " + g.total + " photos"
        : g.total + " photos";
      top.textContent = "";
      bottom.textContent = "";
      top.appendChild(pager(items.length, state, draw));
      bottom.appendChild(pager(items.length, state, draw));
    };
    draw();
  }

  // ---------------------------------------------------------------- review
  var reviewRoot = document.getElementById("review-app");
  var review = data.review || { runs: [], items: [] };
  if (reviewRoot && review.items.length) {
    var rstate = { page: 0 };
    var rtop = el("div");
    var table = el("table", "review");
    var rbottom = el("div");
    reviewRoot.appendChild(rtop);
    reviewRoot.appendChild(el("div", "scroll")).appendChild(table);
    reviewRoot.appendChild(rbottom);
    var drawReview = function () {
      table.textContent = "";
      var head = el("tr");
      ["photo", "title", "gold"].forEach(function (h) { head.appendChild(el("th", "", h)); });
      review.runs.forEach(function (r) {
        var th = el("th", "", r.method);
        th.title = r.id;
        head.appendChild(th);
      });
      table.appendChild(head);
      var start = rstate.page * pageSize;
      review.items.slice(start, start + pageSize).forEach(function (item) {
        var tr = el("tr");
        tr.setAttribute("data-photo", item.i);
        var cell = el("td");
        if (item.t) {
          var a = el("a");
          if (item.u) { a.href = item.u; a.target = "_blank"; a.rel = "noopener"; }
          var img = el("img");
          img.loading = "lazy";
          img.src = item.t;
          img.alt = item.n || "";
          a.appendChild(img);
          cell.appendChild(a);
        }
        tr.appendChild(cell);
        tr.appendChild(el("td", "", item.n || ""));
        tr.appendChild(el("td", "", item.g ? nameOf(item.g) : "–"));
        item.a.forEach(function (ans) {
          var td = el("td");
          var label = ans[0];
          var chip = el("span", "answer", nameOf(label) + (ans[1] !== null && ans[1] !== undefined ? " " + pct(ans[1]) : ""));
          chip.style.background = classes[label] ? colourOf(label) : "#777";
          if (item.g && label === item.g) chip.style.outline = "2px solid #2e7d32";
          td.appendChild(chip);
          tr.appendChild(td);
        });
        table.appendChild(tr);
      });
      rtop.textContent = "";
      rbottom.textContent = "";
      rtop.appendChild(pager(review.items.length, rstate, drawReview));
      rbottom.appendChild(pager(review.items.length, rstate, drawReview));
    };
    drawReview();
  }
  document.documentElement.setAttribute("data-report-ready", "1");
})();
