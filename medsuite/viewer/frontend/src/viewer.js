// The reading view: three linked planes (axial large + coronal + sagittal, 1x3, or one plane), each drawn by
// its own WebGL2 canvas (tile.js). Everything a reader does with the scan happens here, in the browser: slice
// scrolling (keys, wheel), crosshair navigation, window/level (drag and presets 1-5), zoom/pan, the ruler, the HU
// readout, orientation markers and scale bars, overlays. Python is told the resulting view state (debounced)
// so that the URL can hold it; it is never asked to draw anything.

import { Tile } from "./tile.js";
import { gunzip, planeLayout, readNifti, texelToVoxel } from "./volume.js";

const PLANES = ["axial", "coronal", "sagittal"];
const TOOLS = {
  navigate: { label: "Navigate", hint: "click or drag: move the crosshair" },
  window: { label: "W/L", hint: "drag: window width (left-right) and level (up-down)" },
  ruler: { label: "Ruler", hint: "drag: measure a distance in mm" },
  pan: { label: "Pan", hint: "drag: move the image" },
};
const LAYOUTS = [["3up", "Axial + 2", "axial large, coronal and sagittal beside it (F or double-click: 1-up)"],
  ["row", "1×3", "three planes side by side"], ["axial", "Axial", "1-up axial"], ["coronal", "Coronal", "1-up coronal"],
  ["sagittal", "Sagittal", "1-up sagittal"]];
const STATE_DEBOUNCE_MS = 500;
// the attribution colour map (also in why.py HEAT_CSS): dark red -> red -> orange -> pale yellow, alpha rising
const HEAT_STOPS = [[0, 128, 0, 0, 0], [0.35, 230, 20, 0, 0.43], [0.7, 255, 160, 0, 0.78], [1, 255, 255, 120, 1]];

function heatColor(calMin, opacity) {
  return (v) => {
    if (!(v >= calMin)) return null;
    const t = Math.min(1, v);
    let i = 1;
    while (i < HEAT_STOPS.length - 1 && t > HEAT_STOPS[i][0]) i++;
    const [t0, r0, g0, b0, a0] = HEAT_STOPS[i - 1];
    const [t1, r1, g1, b1, a1] = HEAT_STOPS[i];
    const f = (t - t0) / (t1 - t0);
    return [r0 + f * (r1 - r0), g0 + f * (g1 - g0), b0 + f * (b1 - b0), (a0 + f * (a1 - a0)) * opacity];
  };
}
const NODULE_COLORS = { 1: [40, 255, 90, 1], 2: [255, 190, 40, 0.9] };
const AMBER = [255, 170, 0, 0.28];

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmt(v, digits = 0) {
  return Number.isFinite(v) ? v.toFixed(digits).replace("-", "\u2212") : "–";
}

export class ReadingView {
  constructor(root, { onState }) {
    this.root = root;
    this.onState = onState;
    this.spec = null;
    this.vol = null;
    this.volumeId = null;
    this.overlays = {};   // slot -> {id, vol, color, visible}
    this.pending = {};
    this.missing = new Set();
    this.c = [0, 0, 0];   // crosshair, native voxel (i, j, k)
    this.window = null;
    this.layout = "3up";
    this.activePlane = "axial";
    this.tool = "navigate";
    this.show = { heat: true, nodules: true, marks: true };
    this.heatOpacity = null;
    this.rulers = [];
    this.appliedInit = null;
    this.seq = 0;
    this.stateTimer = null;
    this.mouse = null;
    this.stats = { changes: [], loads: [], ready: null };
    window.medsuiteViewer = this;
    this.toolbar = el("div", { id: "toolbar" });
    this.stage = el("div", { id: "stage" });
    this.message = el("div", { id: "message" }, "Waiting for the scan …");
    this.status = el("div", { id: "status" });
    this.stage.append(this.message);
    root.append(this.toolbar, this.stage, this.status);
    this.tiles = Object.fromEntries(PLANES.map((p) => [p, new Tile(this.stage, p)]));
    this.installInput();
    new ResizeObserver(() => this.relayout()).observe(this.stage);
  }

  // ---------------------------------------------------------------- toolbar
  buildToolbar() {
    const spec = this.spec;
    const group = (label, ...items) => el("div", { class: "group" }, el("span", { class: "glabel" }, label), ...items);
    this.layoutButtons = {};
    const lay = LAYOUTS.map(([key, label, title]) => (this.layoutButtons[key] =
      el("button", { title, "data-layout": key, onclick: () => this.setLayout(key) }, label)));
    this.presetButtons = {};
    const presets = (spec.presets || []).map((p) => {
      const b = el("button", { title: `key ${p.key}`, "data-preset": p.key, onclick: () => this.applyPreset(p.key) },
        p.width ? `${p.key} ${p.name} W${p.width} L${p.level}` : `${p.key} ${p.name} (none)`);
      if (!p.width) b.disabled = true;
      return (this.presetButtons[p.key] = b);
    });
    this.toolButtons = {};
    const tools = Object.entries(TOOLS).map(([key, t]) => (this.toolButtons[key] =
      el("button", { title: t.hint, "data-tool": key, onclick: () => this.setTool(key) }, t.label)));
    const items = [group("Layout", ...lay), group("Window", ...presets), group("Left drag", ...tools),
      group("View",
        el("button", { title: "zoom in (+ or Ctrl+wheel)", onclick: () => this.zoomAll(1.25) }, "+"),
        el("button", { title: "zoom out (- or Ctrl+wheel)", onclick: () => this.zoomAll(0.8) }, "−"),
        el("button", { title: "reset zoom, pan and window (R)", onclick: () => this.resetView() }, "Reset"),
        el("button", { title: "remove the ruler measurements", onclick: () => { this.rulers = []; this.decorateAll(); } }, "Clear ruler"))];
    const toggles = [];
    const toggle = (key, label, title) => {
      const box = el("input", { type: "checkbox", "data-overlay": key, onchange: (e) => this.setOverlay(key, e.target.checked) });
      box.checked = this.show[key];
      return el("label", { class: "toggle", title }, box, label);
    };
    if (spec.overlays?.heat) {
      toggles.push(toggle("heat", "Heat map", spec.overlays.heat.label || "attribution"));
      const slider = el("input", { type: "range", min: "0", max: "1", step: "0.05", "data-overlay-opacity": "heat",
        title: "heat map opacity", oninput: (e) => { this.heatOpacity = Number(e.target.value); this.refreshOverlays(); } });
      slider.value = String(this.heatOpacity ?? spec.overlays.heat.opacity ?? 0.8);
      toggles.push(slider);
    }
    if (spec.overlays?.nodules) toggles.push(toggle("nodules", "Nodules", "every nodule of this series (green: the one under review)"));
    if (spec.overlays?.marks) toggles.push(toggle("marks", "Interpolated", "slices that were interpolated, not acquired (amber)"));
    if (toggles.length) items.push(group("Overlays", ...toggles));
    const nods = (spec.nodules || []).map((n) => el("button", {
      class: n.current ? "nodule current" : "nodule", title: n.title || "", "data-nodule": n.name,
      onclick: () => this.gotoVoxel(n.zyx),
    }, n.name));
    if (nods.length) items.push(group("Go to", ...nods));
    this.toolbar.replaceChildren(...items);
    this.refreshToolbar();
  }

  refreshToolbar() {
    if (!this.layoutButtons) return;
    for (const [k, b] of Object.entries(this.layoutButtons)) b.classList.toggle("on", k === this.layout);
    for (const [k, b] of Object.entries(this.toolButtons)) b.classList.toggle("on", k === this.tool);
    const preset = this.currentPreset();
    for (const [k, b] of Object.entries(this.presetButtons)) b.classList.toggle("on", k === preset);
  }

  // ---------------------------------------------------------------- updates
  /** A render from Python: the spec (JSON) and any bytes it carries. */
  async update(spec, payloads) {
    const specChanged = JSON.stringify(spec) !== JSON.stringify(this.spec);
    this.spec = spec;
    if (specChanged) this.buildToolbar();
    await this.syncPayloads(payloads);
    this.maybeApplyInit();
  }

  wanted() {
    const s = this.spec;
    const out = { volume: s.volume?.id || null };
    for (const slot of ["heat", "nodules", "marks"]) out[slot] = s.overlays?.[slot]?.id || null;
    return out;
  }

  async syncPayloads(payloads) {
    const wanted = this.wanted();
    const have = { volume: this.volumeId, ...Object.fromEntries(Object.entries(this.overlays).map(([k, v]) => [k, v.id])) };
    let changed = false;
    if (wanted.volume !== this.volumeId) {
      await this.loadSlot("volume", wanted.volume, payloads.volume) && (changed = true);
    }
    if (!this.vol || this.volumeId !== wanted.volume) { if (changed) this.report(); return; }
    for (const slot of ["heat", "nodules", "marks"]) {
      if (!wanted[slot]) {
        if (this.overlays[slot]) { delete this.overlays[slot]; changed = true; }
        continue;
      }
      if (have[slot] === wanted[slot]) continue;
      if (await this.loadSlot(slot, wanted[slot], payloads[slot])) changed = true;
    }
    this.styleOverlays();
    if (changed) {
      this.refreshOverlays();
      this.reportSoon(0);
    }
  }

  /** Decode one payload; true when it was loaded, false when its bytes are missing (asked for) or busy. */
  async loadSlot(slot, id, bytes) {
    if (this.pending[slot] === id) return false;
    if (!bytes || !bytes.length) {
      if (!this.missing.has(id)) { this.missing.add(id); this.reportSoon(0); }
      if (slot === "volume") this.showMessage("Loading the scan …");
      return false;
    }
    this.pending[slot] = id;
    const t0 = performance.now();
    try {
      if (slot === "volume") this.showMessage("Opening the scan …");
      const buffer = await gunzip(bytes);
      const t1 = performance.now();
      const vol = readNifti(buffer);
      if (slot === "volume") {
        this.setVolume(vol, id);
      } else {
        this.overlays[slot] = { id, vol, visible: true, color: null };
      }
      this.missing.delete(id);
      this.stats.loads.push({ slot, id, bytes: bytes.length, unzipMs: t1 - t0, totalMs: performance.now() - t0 });
      return true;
    } catch (err) {
      this.showMessage(`Cannot display this ${slot === "volume" ? "scan" : "overlay"}: ${err.message}`);
      console.error(err);
      return false;
    } finally {
      delete this.pending[slot];
    }
  }

  setVolume(vol, id) {
    this.vol = vol;
    this.volumeId = id;
    this.overlays = {};
    this.rulers = [];
    this.appliedInit = null;
    for (const p of PLANES) {
      const t = this.tiles[p];
      t.setPlane(vol, planeLayout(vol, p));
      t.zoom = 1;
      t.pan = [0, 0];
    }
    this.c = vol.dims.map((n) => Math.floor((n - 1) / 2));
    const w = this.spec.window;
    this.window = [w.width, w.level];
    this.hideMessage();
    this.relayout();
  }

  styleOverlays() {
    const o = this.spec.overlays || {};
    if (this.overlays.heat) {
      this.overlays.heat.visible = this.show.heat;
      this.overlays.heat.color = heatColor(o.heat?.cal_min ?? 0.02, this.heatOpacity ?? o.heat?.opacity ?? 0.8);
    }
    if (this.overlays.nodules) {
      this.overlays.nodules.visible = this.show.nodules;
      this.overlays.nodules.color = (v) => NODULE_COLORS[v] || null;
    }
    if (this.overlays.marks) {
      this.overlays.marks.visible = this.show.marks;
      this.overlays.marks.color = (v) => (v > 0 ? AMBER : null);
    }
  }

  overlayList() {
    return ["heat", "nodules", "marks"].map((s) => this.overlays[s]).filter(Boolean);
  }

  setOverlay(key, on) {
    this.show[key] = on;
    this.refreshOverlays();
  }

  refreshOverlays() {
    if (!this.vol) return;
    this.styleOverlays();
    const list = this.overlayList();
    for (const p of PLANES) {
      const t = this.tiles[p];
      t.loadOverlay(list);
      t.draw(this.window);
    }
  }

  maybeApplyInit() {
    const init = this.spec.init;
    if (!init || !this.vol || this.volumeId !== this.spec.volume.id || this.appliedInit === init.token) return;
    this.appliedInit = init.token;
    if (init.layout) this.setLayout(init.layout, false);
    if (init.window && init.window[0] > 0) this.window = [init.window[0], init.window[1]];
    if (init.zyx) this.c = [init.zyx[2], init.zyx[1], init.zyx[0]];
    this.clampCrosshair();
    this.renderAll(true);
    this.refreshToolbar();
    this.stats.ready = performance.now();
    document.body.dataset.ready = this.spec.volume.id;
    this.reportSoon(0);
  }

  // ------------------------------------------------------------- rendering
  relayout() {
    const r = this.stage.getBoundingClientRect();
    const W = r.width;
    const H = r.height;
    const place = (p, l, t, w, h, visible = true) => this.tiles[p].place(l, t, w, h, visible);
    if (this.layout === "3up") {
      const f = W > 0 ? Math.min(0.64, Math.max(0.45, H / W)) : 0.6;
      const aw = Math.floor(W * f);
      place("axial", 0, 0, aw - 2, H);
      place("coronal", aw, 0, W - aw, Math.floor(H / 2) - 1);
      place("sagittal", aw, Math.floor(H / 2) + 1, W - aw, H - Math.floor(H / 2) - 1);
    } else if (this.layout === "row") {
      const w = Math.floor(W / 3);
      PLANES.forEach((p, i) => place(p, i * w, 0, w - 2, H));
    } else {
      for (const p of PLANES) place(p, 0, 0, W, H, p === this.layout);
    }
    if (this.vol) this.renderAll(true);
  }

  sliceOf(p) {
    const t = this.tiles[p];
    return Math.round(this.c[t.pl.n]);
  }

  clampCrosshair() {
    this.c = this.c.map((v, a) => Math.max(0, Math.min(this.vol.dims[a] - 1, v)));
  }

  /** Redraw: tiles whose slice changed (or all with `force`), then crosshairs and labels everywhere. */
  renderAll(force = false) {
    if (!this.vol) return;
    const list = this.overlayList();
    for (const p of PLANES) {
      const t = this.tiles[p];
      const changed = t.load(this.sliceOf(p), list, force);
      if (changed || force) t.draw(this.window);
    }
    this.decorateAll();
  }

  decorateAll() {
    const interp = new Set(this.spec?.interpolated || []);
    for (const p of PLANES) this.tiles[p].decorate(this.c, interp, this.rulers);
    this.drawStatus();
  }

  redrawWindow() {
    for (const p of PLANES) this.tiles[p].draw(this.window);
    this.refreshToolbar();
    this.drawStatus();
  }

  // -------------------------------------------------------------- actions
  gotoVoxel(zyx, record = true) {
    if (!this.vol) return;
    this.c = [zyx[2], zyx[1], zyx[0]];
    this.clampCrosshair();
    this.renderAll();
    if (record) this.afterChange(null);
  }

  /** `delta` slices in `plane`: +1 towards the head (axial), the front (coronal), the patient's left (sagittal). */
  step(plane, delta, event) {
    if (!this.vol) return false;
    const pl = this.tiles[plane].pl;
    const towards = plane === "sagittal" ? -1 : 1; // sagittal +1 = towards -R (left)
    const n = pl.n;
    this.c[n] = Math.max(0, Math.min(pl.ns - 1, Math.round(this.c[n]) + delta * pl.normalSign * towards));
    this.renderAll();
    this.afterChange(event);
    return true;
  }

  setLayout(layout, record = true) {
    if (!LAYOUTS.some(([k]) => k === layout)) return;
    this.layout = layout;
    if (PLANES.includes(layout)) this.activePlane = layout;
    this.relayout();
    this.refreshToolbar();
    if (record) this.afterChange(null);
  }

  setTool(tool) {
    this.tool = tool;
    this.refreshToolbar();
    this.drawStatus();
  }

  applyWindow(width, level, record = true) {
    if (!(width > 0)) return;
    this.window = [width, level];
    this.redrawWindow();
    if (record) this.afterChange(null);
  }

  applyPreset(key) {
    const p = (this.spec.presets || []).find((q) => q.key === key);
    if (p && p.width) this.applyWindow(p.width, p.level);
  }

  currentPreset() {
    if (!this.window) return null;
    const p = (this.spec?.presets || []).find((q) => q.width && Math.abs(q.width - this.window[0]) < 0.5 && Math.abs(q.level - this.window[1]) < 0.5);
    return p ? p.key : null;
  }

  zoomAll(factor) {
    for (const p of PLANES) this.tiles[p].zoom = Math.max(0.25, Math.min(16, this.tiles[p].zoom * factor));
    this.renderAll(true);
    this.afterChange(null);
  }

  zoomAt(plane, factor, x, y) {
    const t = this.tiles[plane];
    const before = t.texelAt(x, y);
    t.zoom = Math.max(0.25, Math.min(16, t.zoom * factor));
    const after = t.pointAt(before[0], before[1]);
    t.pan = [t.pan[0] + x - after[0], t.pan[1] + y - after[1]];
    t.draw(this.window);
    this.decorateAll();
  }

  resetView() {
    for (const p of PLANES) { this.tiles[p].zoom = 1; this.tiles[p].pan = [0, 0]; }
    const init = this.spec.init || {};
    const w = init.window && init.window[0] > 0 ? init.window : [this.spec.window.width, this.spec.window.level];
    this.window = [w[0], w[1]];
    this.renderAll(true);
    this.refreshToolbar();
    this.afterChange(null);
  }

  // ----------------------------------------------------------------- input
  tileAt(clientX, clientY) {
    for (const p of PLANES) {
      const t = this.tiles[p];
      if (!t.visible) continue;
      const r = t.box.getBoundingClientRect();
      if (clientX >= r.left && clientX < r.right && clientY >= r.top && clientY < r.bottom) {
        return { plane: p, x: clientX - r.left, y: clientY - r.top };
      }
    }
    return null;
  }

  planeForKeys() {
    return PLANES.includes(this.layout) ? this.layout : this.activePlane;
  }

  /** A key press; true when the viewer used it. `offset` converts event.timeStamp to this page's clock. */
  handleKey(e, offset = 0) {
    if (!this.vol || e.altKey || e.metaKey) return false;
    const stamp = { timeStamp: e.timeStamp + offset, kind: "key" };
    const plane = this.planeForKeys();
    switch (e.key) {
      case "ArrowUp": return this.step(plane, 1, stamp);
      case "ArrowDown": return this.step(plane, -1, stamp);
      case "PageUp": return this.step(plane, 10, stamp);
      case "PageDown": return this.step(plane, -10, stamp);
      case "1": case "2": case "3": case "4": case "5":
        if (e.ctrlKey) return false;
        this.applyPreset(e.key);
        return true;
      case "r": case "R":
        if (e.ctrlKey) return false;
        this.resetView();
        return true;
      case "f": case "F":
        if (e.ctrlKey) return false;
        this.setLayout(PLANES.includes(this.layout) ? "3up" : plane);
        return true;
      case "+": case "=":
        this.zoomAll(1.25);
        return true;
      case "-":
        this.zoomAll(0.8);
        return true;
      case "Escape":
        this.setTool("navigate");
        return true;
      default:
        return false;
    }
  }

  installInput() {
    window.addEventListener("keydown", (e) => {
      if (this.handleKey(e)) { e.preventDefault(); e.stopPropagation(); }
      else if (!e.ctrlKey && !e.metaKey && !e.altKey && e.key.length === 1) this.forwardKey(e);
    }, true);
    this.installParentKeys();
    const stage = this.stage;
    stage.addEventListener("wheel", (e) => {
      if (!this.vol) return;
      e.preventDefault();
      const hit = this.tileAt(e.clientX, e.clientY);
      if (!hit) return;
      this.activePlane = hit.plane;
      if (e.ctrlKey || e.metaKey) {
        this.zoomAt(hit.plane, e.deltaY < 0 ? 1.15 : 1 / 1.15, hit.x, hit.y);
        this.reportSoon();
        return;
      }
      const delta = e.deltaY < 0 ? 1 : e.deltaY > 0 ? -1 : 0;
      if (delta) this.step(hit.plane, delta, { timeStamp: e.timeStamp, kind: "wheel" });
    }, { passive: false });
    stage.addEventListener("contextmenu", (e) => e.preventDefault());
    stage.addEventListener("dblclick", (e) => {
      const hit = this.tileAt(e.clientX, e.clientY);
      if (hit) this.setLayout(PLANES.includes(this.layout) ? "3up" : hit.plane);
    });
    stage.addEventListener("pointerdown", (e) => this.pointerDown(e));
    stage.addEventListener("pointermove", (e) => this.pointerMove(e));
    stage.addEventListener("pointerup", (e) => this.pointerUp(e));
    stage.addEventListener("pointerleave", () => { this.mouse = null; this.drawStatus(); });
  }

  dragMode(e) {
    if (e.button === 2) return "window";
    if (e.button === 1) return "pan";
    if (e.shiftKey) return "ruler";
    if (e.ctrlKey) return "pan";
    return this.tool;
  }

  pointerDown(e) {
    const hit = this.tileAt(e.clientX, e.clientY);
    if (!hit || !this.vol) return;
    this.activePlane = hit.plane;
    const mode = this.dragMode(e);
    this.stage.setPointerCapture(e.pointerId);
    const t = this.tiles[hit.plane];
    this.drag = { mode, plane: hit.plane, x0: e.clientX, y0: e.clientY, window0: [...this.window], pan0: [...t.pan],
      start: t.texelAt(hit.x, hit.y), ruler: null };
    if (mode === "navigate") this.navigateTo(hit);
    e.preventDefault();
  }

  pointerMove(e) {
    this.mouse = [e.clientX, e.clientY];
    const hit = this.tileAt(e.clientX, e.clientY);
    if (hit && !this.drag && !PLANES.includes(this.layout)) this.activePlane = hit.plane;
    const d = this.drag;
    if (d) {
      const dx = e.clientX - d.x0;
      const dy = e.clientY - d.y0;
      const t = this.tiles[d.plane];
      if (d.mode === "navigate" && hit && hit.plane === d.plane) this.navigateTo(hit);
      else if (d.mode === "window") {
        const scale = Math.max(1, d.window0[0]) / 300;
        this.window = [Math.max(1, d.window0[0] + dx * scale), d.window0[1] - dy * scale];
        if (!this.windowFrame) {
          this.windowFrame = requestAnimationFrame(() => { this.windowFrame = null; this.redrawWindow(); });
        }
      } else if (d.mode === "pan") {
        t.pan = [d.pan0[0] + dx, d.pan0[1] + dy];
        t.draw(this.window);
        this.decorateAll();
      } else if (d.mode === "ruler") {
        const r = t.box.getBoundingClientRect();
        const end = t.texelAt(e.clientX - r.left, e.clientY - r.top);
        d.ruler = this.makeRuler(d.plane, d.start, end);
        t.drawRulers([...this.rulers, d.ruler]);
      }
    }
    this.drawStatus();
  }

  pointerUp(e) {
    const d = this.drag;
    this.drag = null;
    if (!d) return;
    try { this.stage.releasePointerCapture(e.pointerId); } catch { /* already released */ }
    if (d.mode === "ruler" && d.ruler && d.ruler.mm > 0.05) {
      this.rulers.push(d.ruler);
      this.decorateAll();
    } else if (d.mode === "window") {
      this.window = this.window.map((v) => Math.round(v));
      this.redrawWindow();
      this.afterChange(null);
    } else if (d.mode === "pan") {
      this.reportSoon();
    }
  }

  makeRuler(plane, a, b) {
    const pl = this.tiles[plane].pl;
    const mm = Math.hypot((b[0] - a[0]) * pl.su, (b[1] - a[1]) * pl.sv);
    return { plane, slice: this.tiles[plane].slice, a, b, mm };
  }

  navigateTo(hit) {
    const t = this.tiles[hit.plane];
    const [tx, ty] = t.texelAt(hit.x, hit.y);
    const pl = t.pl;
    const x = Math.max(0, Math.min(pl.nu - 1, Math.floor(tx)));
    const y = Math.max(0, Math.min(pl.nv - 1, Math.floor(ty)));
    const v = texelToVoxel(pl, t.slice, x, y);
    this.c[pl.u] = v[pl.u];
    this.c[pl.v] = v[pl.v];
    this.renderAll();
    this.afterChange(null);
  }

  installParentKeys() {
    let doc;
    let offset = 0;
    try {
      doc = window.parent.document;
      offset = window.parent.performance.timeOrigin - performance.timeOrigin;
    } catch {
      return; // another origin: keys work after a click on the images only
    }
    if (doc === document) return;
    const listener = (e) => {
      const frame = window.frameElement;
      if (!frame || !frame.isConnected) { doc.removeEventListener("keydown", listener, true); return; }
      const t = e.target;
      const tag = t && t.tagName;
      if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) return;
      if (t && t.closest && t.closest("[role=dialog],[role=listbox],[role=slider],[role=radiogroup],[data-baseweb=popover]")) return;
      if (this.handleKey(e, offset)) { e.preventDefault(); e.stopPropagation(); }
    };
    doc.addEventListener("keydown", listener, true);
    window.addEventListener("pagehide", () => doc.removeEventListener("keydown", listener, true));
  }

  /** Keys the viewer does not use (e.g. N for "next unreviewed") go to the page's own shortcuts. */
  forwardKey(e) {
    try {
      if (window.parent === window) return;
      window.parent.document.dispatchEvent(new window.parent.KeyboardEvent("keydown",
        { key: e.key, code: e.code, shiftKey: e.shiftKey, bubbles: true }));
    } catch {
      /* another origin: nothing to forward to */
    }
  }

  // ---------------------------------------------------------- after change
  afterChange(event) {
    if (event) {
      const record = { kind: event.kind, t0: event.timeStamp, drawn: performance.now(), frame: null, slice: Math.round(this.c[2]) };
      this.stats.changes.push(record);
      if (this.stats.changes.length > 4000) this.stats.changes.splice(0, 2000);
      // performance.now(), not the callback argument: that is the frame's scheduled time, which lags under load
      requestAnimationFrame(() => requestAnimationFrame(() => { record.frame = performance.now(); }));
    }
    this.reportSoon();
  }

  reportSoon(delay = STATE_DEBOUNCE_MS) {
    clearTimeout(this.stateTimer);
    this.stateTimer = setTimeout(() => this.report(), delay);
  }

  report() {
    if (!this.spec) return;
    const have = {};
    if (this.volumeId) have.volume = this.volumeId;
    for (const [slot, v] of Object.entries(this.overlays)) have[slot] = v.id;
    const ready = this.vol && this.volumeId === this.spec.volume?.id;
    const state = ready ? {
      zyx: [Math.round(this.c[2]), Math.round(this.c[1]), Math.round(this.c[0])],
      window: this.window,
      layout: this.layout,
    } : null;
    this.seq += 1;
    this.onState({ seq: this.seq, have, need: [...this.missing], state, case: this.spec.case?.id ?? null });
  }

  // --------------------------------------------------------------- status
  showMessage(text) {
    this.message.textContent = text;
    this.message.style.display = "flex";
  }

  hideMessage() {
    this.message.style.display = "none";
  }

  drawStatus() {
    if (!this.vol) { this.status.textContent = ""; return; }
    const parts = [];
    const hit = this.mouse && this.tileAt(this.mouse[0], this.mouse[1]);
    if (hit) {
      const t = this.tiles[hit.plane];
      const [tx, ty] = t.texelAt(hit.x, hit.y);
      const pl = t.pl;
      if (tx >= 0 && ty >= 0 && tx < pl.nu && ty < pl.nv) {
        const v = texelToVoxel(pl, t.slice, Math.floor(tx), Math.floor(ty));
        const hu = this.vol.value(v[0], v[1], v[2]);
        const w = this.vol.toWorld(v);
        parts.push(`<b class="hu" data-hu="${hu}">${fmt(hu)} HU</b> at (${fmt(-w[0], 1)}, ${fmt(-w[1], 1)}, ${fmt(w[2], 1)}) mm`);
      }
    }
    const c = this.c.map((v) => Math.round(v));
    const w = this.vol.toWorld(c);
    parts.push(`axial slice ${c[2] + 1}/${this.vol.dims[2]} · crosshair (${fmt(-w[0], 1)}, ${fmt(-w[1], 1)}, ${fmt(w[2], 1)}) mm LPS`);
    if (this.window) parts.push(`W${fmt(this.window[0])} L${fmt(this.window[1])}`);
    parts.push(`<span class="hint">${TOOLS[this.tool].hint} · right drag: W/L · middle or Ctrl+drag: pan · Shift+drag: ruler · wheel or ↑↓: slices · Ctrl+wheel: zoom</span>`);
    this.status.innerHTML = parts.join(" · ");
    document.body.dataset.slice = String(c[2]);
  }
}
