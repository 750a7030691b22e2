"""The report's map, drawn with Leaflet shipped inside the package: it works offline.

Leaflet's script and style (``naturelens/data/leaflet/``, BSD 2-Clause, licence kept
beside them) are inlined into the page. The map sits on a plain background with a
graticule, so points and photo-user-day cells show where no tile server can be reached;
OpenStreetMap tiles are drawn over the background when they load.

Points are SVG circles with the class ``nl-point`` (countable in the page's DOM) up to
``SVG_POINTS`` of them; more are drawn on a canvas, which stays fast with tens of
thousands.
"""

from __future__ import annotations

import base64
import html
import json
from functools import cache
from importlib import resources
from typing import Any

from markupsafe import Markup

SVG_POINTS = 5000
TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


@cache
def _leaflet() -> tuple[str, str]:
    """Leaflet's script and style, with the style's layer icons inlined as data URLs."""
    folder = resources.files("naturelens") / "data" / "leaflet"
    script = (folder / "leaflet.js").read_text(encoding="utf-8")
    style = (folder / "leaflet.css").read_text(encoding="utf-8")
    for name in ("layers.png", "layers-2x.png"):
        data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
        style = style.replace(f"url(images/{name})", f"url(data:image/png;base64,{data})")
    return script, style


def _esc(value: Any) -> str:
    """Text for a place that Leaflet fills with ``innerHTML`` (tooltips, layer names)."""
    return html.escape("" if value is None else str(value), quote=True)


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can end it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CODE = """
(function () {
  var data = JSON.parse(document.getElementById("nl-map-data").textContent);
  var el = document.getElementById("nl-map");
  var map = L.map(el, {preferCanvas: false, zoomSnap: 0.25});
  L.control.scale().addTo(map);
  // Tiles draw over the plain background when a tile server answers; offline they do not,
  // and the graticule, cells and points still show.
  L.tileLayer(data.tiles, {maxZoom: 19, attribution: "&copy; OpenStreetMap contributors"})
    .addTo(map);
  var graticule = L.layerGroup().addTo(map);
  function drawGraticule() {
    graticule.clearLayers();
    var b = map.getBounds(), span = Math.max(b.getNorth() - b.getSouth(), 1e-6);
    var step = Math.pow(10, Math.floor(Math.log10(span / 2)));
    if (span / step > 10) step *= 5; else if (span / step > 5) step *= 2;
    var digits = Math.max(0, -Math.floor(Math.log10(step)));
    var style = {color: "#8a94a6", weight: 0.6, opacity: 0.8, interactive: false};
    for (var lat = Math.ceil(b.getSouth() / step) * step; lat <= b.getNorth(); lat += step) {
      graticule.addLayer(L.polyline([[lat, b.getWest() - 360], [lat, b.getEast() + 360]], style)
        .bindTooltip(lat.toFixed(digits) + "\\u00b0", {permanent: false}));
    }
    for (var lon = Math.ceil(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
      graticule.addLayer(L.polyline([[-85, lon], [85, lon]], style)
        .bindTooltip(lon.toFixed(digits) + "\\u00b0", {permanent: false}));
    }
  }
  var canvas = data.points.length > data.svgPoints ? L.canvas() : L.svg();
  var overlays = {};
  data.classes.forEach(function (c) {
    var cells = L.layerGroup(), points = L.layerGroup();
    data.cells.forEach(function (cell) {
      if (cell.k !== c.id) return;
      L.rectangle([[cell.s, cell.w], [cell.n, cell.e]], {
        color: c.colour, weight: 1, fillColor: c.colour, fillOpacity: cell.shade
      }).bindTooltip(c.name + ": " + cell.pud + " photo-user-days, " + cell.photos + " photos")
        .addTo(cells);
    });
    data.points.forEach(function (p) {
      if (p.k !== c.id) return;
      L.circleMarker([p.lat, p.lon], {
        renderer: canvas, radius: 4, color: c.colour, weight: 1, fillColor: c.colour,
        fillOpacity: 0.85, className: "nl-point"
      }).bindTooltip(p.tip).addTo(points);
    });
    if (data.cells.some(function (x) { return x.k === c.id; })) {
      cells.addTo(map);
      overlays[c.name + ": photo-user-days (" + data.cellKm + " km)"] = cells;
    }
    if (data.points.some(function (x) { return x.k === c.id; })) {
      points.addTo(map);
      overlays[c.name + ": photos"] = points;
    }
  });
  L.control.layers(null, overlays, {collapsed: data.classes.length > 4}).addTo(map);
  map.on("moveend", drawGraticule);
  map.fitBounds(data.bounds, {padding: [12, 12]});
  drawGraticule();
  el.setAttribute("data-points", String(data.points.length));
})();
"""


def build_map(
    meta: dict[str, dict[str, str]],
    points: list[dict],
    cells: list[dict],
    cell_km: float,
) -> Markup | None:
    """The map as an HTML fragment to put on the page (None when nothing is geotagged).

    Parameters
    ----------
    meta
        Class id -> ``{"name", "colour"}``.
    points
        Photos with ``k`` (class), ``lat``, ``lon``, ``title``, ``confidence``, ``owner``
        and ``taken_at``.
    cells
        Photo-user-day cells with ``class``, ``bounds`` (south, west, north, east), ``pud``
        and ``photos``.
    cell_km
        The cells' size, for the layer names.
    """
    if not points and not cells:
        return None
    lats = [p["lat"] for p in points] + [b for c in cells for b in (c["bounds"][0], c["bounds"][2])]
    lons = [p["lon"] for p in points] + [b for c in cells for b in (c["bounds"][1], c["bounds"][3])]
    ids = list(dict.fromkeys([c["class"] for c in cells] + [p["k"] for p in points]))
    top = {k: max([c["pud"] for c in cells if c["class"] == k] or [1]) for k in ids}
    data = {
        "tiles": TILES,
        "svgPoints": SVG_POINTS,
        "cellKm": f"{cell_km:g}",
        "bounds": [[min(lats), min(lons)], [max(lats), max(lons)]],
        "classes": [
            {
                "id": k,
                "name": _esc(meta.get(k, {}).get("name", k)),
                "colour": meta.get(k, {}).get("colour", "#999999"),
            }
            for k in ids
        ],
        "cells": [
            {
                "k": c["class"],
                "s": s,
                "w": w,
                "n": n,
                "e": e,
                "pud": c["pud"],
                "photos": c["photos"],
                "shade": round(0.15 + 0.6 * c["pud"] / top[c["class"]], 3),
            }
            for c in cells
            for s, w, n, e in [c["bounds"]]
        ],
        "points": [
            {
                "k": p["k"],
                "lat": p["lat"],
                "lon": p["lon"],
                "tip": " · ".join(
                    _esc(v)
                    for v in (
                        p.get("title"),
                        meta.get(p["k"], {}).get("name", p["k"]),
                        f"{p['confidence']:.2f}" if p.get("confidence") is not None else None,
                        p.get("owner"),
                        p.get("taken_at"),
                    )
                    if v not in (None, "")
                ),
            }
            for p in points
        ],
    }
    script, style = _leaflet()
    return Markup(
        f"<style>{style}</style>\n"
        # Sized and coloured inline, so the fragment draws the same on any page.
        '<div id="nl-map" class="map-canvas" role="img" aria-label="map of geotagged photos" '
        'style="height: 560px; background: #eef1f4"></div>\n'
        f'<script type="application/json" id="nl-map-data">{_script_json(data)}</script>\n'
        f"<script>{script}</script>\n<script>{_CODE}</script>"
    )


__all__ = ["build_map"]
