// The reading view: NiiVue (WebGL2) with three linked planes or one, and everything a reader does with the
// scan handled here in the browser: slice scrolling (keys, wheel), crosshair navigation, window/level (drag and
// presets 1-5), zoom/pan, the ruler, the HU readout, scale bars and overlays. Python is told the resulting view
// state (debounced) so that the URL can hold it; it is never asked to draw anything.

import { DRAG_MODE, MULTIPLANAR_TYPE, NVImage, Niivue, SHOW_RENDER, SLICE_TYPE } from "@niivue/niivue";

import { alignedAxis, apply4, invert4, niceLength } from "./geometry.js";
import { gunzip, readNifti } from "./nifti.js";

const PLANES = ["axial", "coronal", "sagittal"];
const PLANE_TYPE = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL };
// world axis (RAS) each plane scrolls along: axial along S, coronal along A, sagittal along R/L
const PLANE_WORLD_AXIS = { axial: 2, coronal: 1, sagittal: 0 };
const TOOLS = {
  navigate: { mode: DRAG_MODE.crosshair, label: "Navigate", hint: "click or drag: move the crosshair" },
  window: { mode: DRAG_MODE.windowing, label: "W/L", hint: "drag: window (left-right) and level (up-down)" },
  ruler: { mode: DRAG_MODE.measurement, label: "Ruler", hint: "drag: measure a distance in mm" },
  pan: { mode: DRAG_MODE.pan, label: "Pan", hint: "drag: move the image" },
};
const HEAT = { R: [128, 230, 255, 255], G: [0, 20, 160, 255], B: [0, 0, 0, 120], A: [0, 110, 200, 255], I: [0, 89, 178, 255] };
const AMBER = { R: [0, 255, 255], G: [0, 170, 170], B: [0, 0, 0], A: [0, 255, 255], I: [0, 1, 255] };
const NODULE_LUT = {
  R: [0, 40, 255], G: [0, 255, 190], B: [0, 90, 40], A: [0, 255, 230], I: [0, 1, 2], labels: ["", "reviewed nodule", "other nodule"],
};
const STATE_DEBOUNCE_MS = 500;

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
    this.nv = null;
    this.images = {}; // slot -> {id, image}
    this.pending = {}; // slot -> id being loaded
    this.missing = new Set(); // ids the page lacks (bytes not sent)
    this.raw = null; // voxel values of the scan for the HU readout
    this.affine = null;
    this.inv = null;
    this.appliedInit = null;
    this.layout = "3up";
    this.single = "axial";
    this.activePlane = "axial";
    this.tool = "navigate";
    this.window = null;
    this.heatOpacity = null;
    this.show = { heat: true, nodules: true, marks: true };
    this.seq = 0;
    this.stateTimer = null;
    this.mouse = null;
    this.stats = { changes: [], loads: [] };
    window.medsuiteViewer = this;
    this.build();
  }

  // ------------------------------------------------------------------ DOM
  build() {
    this.toolbar = el("div", { id: "toolbar" });
    this.canvas = el("canvas", { id: "gl" });
    this.hud = el("div", { id: "hud" });
    this.message = el("div", { id: "message" }, "Waiting for the scan …");
    this.stage = el("div", { id: "stage" }, this.canvas, this.hud, this.message);
    this.status = el("div", { id: "status" });
    this.root.append(this.toolbar, this.stage, this.status);
  }

  buildToolbar() {
    const spec = this.spec;
    const bar = this.toolbar;
    bar.replaceChildren();
    const group = (label, ...items) => el("div", { class: "group" }, el("span", { class: "glabel" }, label), ...items);
    this.layoutButtons = {};
    const layouts = [["3up", "Axial + 2", "axial large, coronal and sagittal beside it (F: 1-up of the plane under the mouse)"],
      ["row", "1×3", "three planes side by side"], ["axial", "Axial", "1-up axial"],
      ["coronal", "Coronal", "1-up coronal"], ["sagittal", "Sagittal", "1-up sagittal"]];
    const lay = layouts.map(([key, label, title]) => {
      const b = el("button", { title, "data-layout": key, onclick: () => this.setLayout(key) }, label);
      this.layoutButtons[key] = b;
      return b;
    });
    bar.append(group("Layout", ...lay));
    this.presetButtons = {};
    const presets = (spec.presets || []).map((p) => {
      const txt = p.width ? `${p.key} ${p.name} W${p.width} L${p.level}` : `${p.key} ${p.name} (none)`;
      const b = el("button", { title: `key ${p.key}`, "data-preset": p.key, onclick: () => this.applyPreset(p.key) }, txt);
      if (!p.width) b.disabled = true;
      this.presetButtons[p.key] = b;
      return b;
    });
    bar.append(group("Window", ...presets));
    this.toolButtons = {};
    const tools = Object.entries(TOOLS).map(([key, t]) => {
      const b = el("button", { title: t.hint, "data-tool": key, onclick: () => this.setTool(key) }, t.label);
      this.toolButtons[key] = b;
      return b;
    });
    bar.append(group("Left drag", ...tools));
    bar.append(group("View",
      el("button", { title: "zoom in (+ or Ctrl+wheel)", onclick: () => this.zoomBy(1.25) }, "+"),
      el("button", { title: "zoom out (- or Ctrl+wheel)", onclick: () => this.zoomBy(0.8) }, "−"),
      el("button", { title: "reset zoom, pan and window (R)", onclick: () => this.resetView() }, "Reset"),
      el("button", { title: "remove the ruler measurements", onclick: () => { this.nv.clearAllMeasurements?.(); this.nv.drawScene(); } }, "Clear ruler")));
    const toggles = [];
    const toggle = (key, label, title) => {
      const box = el("input", { type: "checkbox", "data-overlay": key, onchange: (e) => { this.show[key] = e.target.checked; this.applyOverlayVisibility(); } });
      box.checked = this.show[key];
      return el("label", { class: "toggle", title }, box, label);
    };
    if (spec.overlays?.heat) {
      toggles.push(toggle("heat", "Heat map", spec.overlays.heat.label || "attribution"));
      const slider = el("input", { type: "range", min: "0", max: "1", step: "0.05", "data-overlay-opacity": "heat",
        title: "heat map opacity", oninput: (e) => { this.heatOpacity = Number(e.target.value); this.applyOverlayVisibility(); } });
      slider.value = String(this.heatOpacity ?? spec.overlays.heat.opacity ?? 0.8);
      toggles.push(slider);
    }
    if (spec.overlays?.nodules) toggles.push(toggle("nodules", "Nodules", "every nodule of this series (green: the one under review)"));
    if (spec.overlays?.marks) toggles.push(toggle("marks", "Interpolated", "slices that were interpolated, not acquired (amber)"));
    if (toggles.length) bar.append(group("Overlays", ...toggles));
    const nods = (spec.nodules || []).map((n) => el("button", {
      class: n.current ? "nodule current" : "nodule", title: n.title || "", "data-nodule": n.name,
      onclick: () => this.gotoVoxel(n.zyx),
    }, n.name));
    if (nods.length) bar.append(group("Go to", ...nods));
    this.refreshToolbar();
  }

  refreshToolbar() {
    if (!this.layoutButtons) return;
    const current = this.layout === "1up" ? this.single : this.layout;
    for (const [k, b] of Object.entries(this.layoutButtons)) b.classList.toggle("on", k === current);
    for (const [k, b] of Object.entries(this.toolButtons)) b.classList.toggle("on", k === this.tool);
    const preset = this.currentPreset();
    for (const [k, b] of Object.entries(this.presetButtons)) b.classList.toggle("on", k === preset);
  }

  // ------------------------------------------------------------- updates
  /** A render from Python: new spec, maybe new bytes. */
  async update(spec, payloads) {
    const first = this.spec === null;
    const volumeChanged = !this.spec || this.spec.volume.id !== spec.volume.id;
    this.spec = spec;
    if (first) await this.initNiivue();
    if (volumeChanged || first) {
      this.buildToolbar();
    } else {
      this.buildToolbar();
    }
    await this.syncImages(payloads);
    this.maybeApplyInit();
    this.applyOverlayVisibility();
    this.drawHud();
  }

  async initNiivue() {
    const nv = new Niivue({
      backColor: [0, 0, 0, 1],
      isRadiologicalConvention: true,
      show3Dcrosshair: false,
      crosshairColor: [0.0, 0.78, 1.0, 0.85],
      crosshairWidth: 1,
      crosshairGap: 10,
      isOrientationTextVisible: true,
      showAllOrientationMarkers: true,
      multiplanarLayout: MULTIPLANAR_TYPE.ROW,
      multiplanarShowRender: SHOW_RENDER.NEVER,
      multiplanarEqualSize: true,
      multiplanarPadPixels: 4,
      sliceType: SLICE_TYPE.MULTIPLANAR,
      dragAndDropEnabled: false,
      showLegend: false,
      isColorbar: false,
      fontColor: [0.85, 0.85, 0.85, 1],
      fontMinPx: 13,
      measureLineColor: [1, 0.85, 0.1, 1],
      measureTextColor: [1, 0.85, 0.1, 1],
      showMeasureUnits: true,
      viewModeHotKey: "",
      clipPlaneHotKey: "",
      cycleClipPlaneHotKey: "",
      logLevel: "warn",
      loadingText: "",
      isResizeCanvas: true,
    });
    await nv.attachToCanvas(this.canvas);
    nv.addColormap("medsuite_heat", HEAT);
    nv.addColormap("medsuite_amber", AMBER);
    this.nv = nv;
    this.setTool(this.tool, false);
    nv.onLocationChange = () => this.afterChange("navigate", null);
    this.installInput();
    new ResizeObserver(() => {
      if (this.layout === "3up") nv.customLayout = this.heroLayout();
      nv.resizeListener();
      this.drawHud();
    }).observe(this.stage);
    this.setLayout("3up", false);
  }

  async syncImages(payloads) {
    const spec = this.spec;
    const wanted = {
      volume: { id: spec.volume.id, bytes: payloads.volume },
      heat: spec.overlays?.heat ? { id: spec.overlays.heat.id, bytes: payloads.heat } : null,
      nodules: spec.overlays?.nodules ? { id: spec.overlays.nodules.id, bytes: payloads.nodules } : null,
      marks: spec.overlays?.marks ? { id: spec.overlays.marks.id, bytes: payloads.marks } : null,
    };
    let changed = false;
    for (const slot of ["volume", "heat", "nodules", "marks"]) {
      const want = wanted[slot];
      const have = this.images[slot];
      if (!want) {
        if (have) { this.nv.removeVolume(have.image); delete this.images[slot]; changed = true; }
        continue;
      }
      if (have && have.id === want.id) continue;
      if (this.pending[slot] === want.id) continue;
      if (!want.bytes || !want.bytes.length) {
        if (!this.missing.has(want.id)) { this.missing.add(want.id); this.reportSoon(0); }
        if (slot === "volume") this.showMessage("Loading the scan …");
        continue;
      }
      this.pending[slot] = want.id;
      try {
        const t0 = performance.now();
        if (slot === "volume") this.showMessage("Opening the scan …");
        const buffer = await gunzip(want.bytes);
        const tUnzip = performance.now();
        const image = await this.makeImage(slot, buffer);
        if (this.spec !== spec && this.spec.volume.id !== spec.volume.id) return; // a newer case took over
        if (slot === "volume") {
          // a new scan replaces everything: overlays belong to the old one
          for (const s of Object.keys(this.images)) this.nv.removeVolume(this.images[s].image);
          this.images = {};
          this.raw = readNifti(buffer);
          this.affine = this.raw.affine;
          this.inv = invert4(this.affine);
          this.nv.addVolume(image);
          this.window = null;
          this.appliedInit = null;
          this.applyWindow(spec.window.width, spec.window.level, false);
          this.hideMessage();
        } else {
          this.nv.addVolume(image);
        }
        this.images[slot] = { id: want.id, image };
        this.missing.delete(want.id);
        this.stats.loads.push({ slot, id: want.id, bytes: want.bytes.length, unzipMs: tUnzip - t0, totalMs: performance.now() - t0 });
        changed = true;
      } catch (err) {
        this.showMessage(`Cannot display this ${slot === "volume" ? "scan" : "overlay"}: ${err.message}`);
        console.error(err);
      } finally {
        delete this.pending[slot];
      }
    }
    if (changed) {
      this.orderOverlays();
      this.reportSoon(0);
    }
  }

  async makeImage(slot, buffer) {
    const spec = this.spec;
    const name = `${slot}.nii`;
    if (slot === "volume") {
      const w = spec.window;
      return await NVImage.loadFromUrl({ url: name, buffer, name, colormap: "gray", trustCalMinMax: true,
        cal_min: w.level - w.width / 2, cal_max: w.level + w.width / 2 });
    }
    if (slot === "heat") {
      const h = spec.overlays.heat;
      return await NVImage.loadFromUrl({ url: name, buffer, name, colormap: "medsuite_heat", opacity: h.opacity ?? 0.8,
        cal_min: h.cal_min ?? 0.02, cal_max: h.cal_max ?? 1, trustCalMinMax: true });
    }
    if (slot === "marks") {
      return await NVImage.loadFromUrl({ url: name, buffer, name, colormap: "medsuite_amber", opacity: 0.28,
        cal_min: 0.5, cal_max: 1, trustCalMinMax: true });
    }
    const img = await NVImage.loadFromUrl({ url: name, buffer, name, colormap: "gray", opacity: 1, trustCalMinMax: true });
    img.setColormapLabel(NODULE_LUT);
    return img;
  }

  orderOverlays() {
    // NiiVue draws volumes in list order: scan, heat, nodule rings, interpolation marks
    const order = ["volume", "heat", "nodules", "marks"].map((s) => this.images[s]?.image).filter(Boolean);
    this.nv.volumes = order;
    this.nv.updateGLVolume();
  }

  applyOverlayVisibility() {
    if (!this.nv || !this.images.volume) return;
    const spec = this.spec;
    const idx = (slot) => this.nv.volumes.indexOf(this.images[slot]?.image);
    let dirty = false;
    const set = (slot, value) => {
      const i = idx(slot);
      if (i > 0 && this.nv.volumes[i].opacity !== value) { this.nv.volumes[i].opacity = value; dirty = true; }
    };
    if (this.images.heat) set("heat", this.show.heat ? (this.heatOpacity ?? spec.overlays?.heat?.opacity ?? 0.8) : 0);
    if (this.images.nodules) set("nodules", this.show.nodules ? 1 : 0);
    if (this.images.marks) set("marks", this.show.marks ? 0.28 : 0);
    if (dirty) this.nv.updateGLVolume();
  }

  maybeApplyInit() {
    const init = this.spec.init;
    if (!init || !this.images.volume || this.appliedInit === init.token) return;
    this.appliedInit = init.token;
    if (init.layout) this.setLayout(init.layout, false);
    if (init.window && init.window[0] > 0) this.applyWindow(init.window[0], init.window[1], false);
    if (init.zyx) this.gotoVoxel(init.zyx, false);
    this.stats.ready = performance.now();
    document.body.dataset.ready = this.spec.volume.id;
    this.reportSoon(0);
  }

  // ------------------------------------------------------------ geometry
  voxelOfCrosshair() {
    const mm = this.nv.frac2mm(this.nv.scene.crosshairPos);
    const v = apply4(this.inv, [mm[0], mm[1], mm[2]]);
    return v.map((x) => Math.round(x));
  }

  dims() {
    return this.raw.dims;
  }

  /** Move the crosshair to voxel (z, y, x) of the scan (array order). */
  gotoVoxel(zyx, record = true) {
    if (!this.images.volume) return;
    const [z, y, x] = zyx;
    const mm = apply4(this.affine, [x, y, z]);
    this.nv.scene.crosshairPos = this.nv.mm2frac(mm);
    this.nv.drawScene();
    if (record) this.afterChange("goto", null);
    else this.drawHud();
  }

  /** One step of `delta` slices in `plane` (towards superior / anterior / left for +1). */
  step(plane, delta, event) {
    if (!this.images.volume) return false;
    const { axis, sign } = alignedAxis(this.affine, PLANE_WORLD_AXIS[plane]);
    const worldSign = plane === "sagittal" ? -1 : 1; // +1 = towards the patient's left (RAS -x)
    const v = this.voxelOfCrosshair();
    const n = this.dims()[axis];
    v[axis] = Math.max(0, Math.min(n - 1, v[axis] + delta * sign * worldSign));
    const mm = apply4(this.affine, v);
    const frac = this.nv.mm2frac(mm);
    // keep the in-plane position exactly where it was (only the scrolled axis moves)
    const pos = this.nv.scene.crosshairPos;
    const k = plane === "axial" ? 2 : plane === "coronal" ? 1 : 0;
    const next = [pos[0], pos[1], pos[2]];
    next[k] = frac[k];
    this.nv.scene.crosshairPos = next;
    this.nv.drawScene();
    this.afterChange("slice", event);
    return true;
  }

  zoomBy(factor) {
    const z = this.nv.scene.pan2Dxyzmm;
    this.nv.scene.pan2Dxyzmm = [z[0], z[1], z[2], Math.max(0.25, Math.min(16, z[3] * factor))];
    this.nv.drawScene();
    this.afterChange("zoom", null);
  }

  resetView() {
    this.nv.scene.pan2Dxyzmm = [0, 0, 0, 1];
    const p = (this.spec.presets || []).find((q) => q.width) || this.spec.window;
    const init = this.spec.init || {};
    const w = init.window && init.window[0] > 0 ? init.window : [p.width, p.level];
    this.applyWindow(w[0], w[1], false);
    this.nv.drawScene();
    this.afterChange("reset", null);
  }

  /** Axial large on the left (square when the stage allows), coronal above sagittal on the right. */
  heroLayout() {
    const r = this.stage.getBoundingClientRect();
    const f = r.width > 0 ? Math.min(0.64, Math.max(0.45, r.height / r.width)) : 0.6;
    return [
      { sliceType: SLICE_TYPE.AXIAL, position: [0, 0, f, 1] },
      { sliceType: SLICE_TYPE.CORONAL, position: [f, 0, 1 - f, 0.5] },
      { sliceType: SLICE_TYPE.SAGITTAL, position: [f, 0.5, 1 - f, 0.5] },
    ];
  }

  setLayout(layout, record = true) {
    if (layout === "3up") {
      this.layout = "3up";
      this.nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
      this.nv.setCustomLayout(this.heroLayout());
    } else if (layout === "row") {
      this.layout = "row";
      this.nv.clearCustomLayout();
      this.nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
    } else if (PLANE_TYPE[layout] !== undefined) {
      this.layout = "1up";
      this.single = layout;
      this.activePlane = layout;
      this.nv.clearCustomLayout();
      this.nv.setSliceType(PLANE_TYPE[layout]);
    }
    this.refreshToolbar();
    if (record) this.afterChange("layout", null);
    else this.drawHud();
  }

  setTool(tool, record = true) {
    this.tool = tool;
    this.nv.setMouseEventConfig({
      leftButton: { primary: TOOLS[tool].mode, withShift: DRAG_MODE.measurement, withCtrl: DRAG_MODE.pan },
      rightButton: DRAG_MODE.windowing,
      centerButton: DRAG_MODE.pan,
    });
    this.refreshToolbar();
    if (record) this.drawHud();
  }

  // -------------------------------------------------------------- window
  applyWindow(width, level, record = true) {
    const vol = this.images.volume?.image;
    if (!vol || !(width > 0)) return;
    vol.cal_min = level - width / 2;
    vol.cal_max = level + width / 2;
    this.window = [width, level];
    this.nv.updateGLVolume();
    this.refreshToolbar();
    if (record) this.afterChange("window", null);
    else this.drawHud();
  }

  readWindowFromImage() {
    const vol = this.images.volume?.image;
    if (!vol) return;
    const w = vol.cal_max - vol.cal_min;
    const l = (vol.cal_max + vol.cal_min) / 2;
    if (!this.window || Math.abs(w - this.window[0]) > 1e-6 || Math.abs(l - this.window[1]) > 1e-6) {
      this.window = [Math.round(w), Math.round(l)];
      this.refreshToolbar();
      this.afterChange("window", null);
    }
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

  // --------------------------------------------------------------- input
  tileAt(clientX, clientY) {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = this.nv.uiData.dpr || window.devicePixelRatio || 1;
    const i = this.nv.tileIndex((clientX - rect.left) * dpr, (clientY - rect.top) * dpr);
    if (i < 0) return null;
    const tile = this.nv.screenSlices[i];
    return tile && tile.axCorSag <= 2 ? PLANES[tile.axCorSag] : null;
  }

  planeForKeys() {
    return this.layout === "1up" ? this.single : this.activePlane;
  }

  /** A key press; true when the viewer used it. `offset` converts event.timeStamp to this page's clock. */
  handleKey(e, offset = 0) {
    if (!this.images.volume || e.altKey || e.metaKey) return false;
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
        this.setLayout(this.layout === "1up" ? "3up" : plane);
        return true;
      case "+": case "=":
        this.zoomBy(1.25);
        return true;
      case "-":
        this.zoomBy(0.8);
        return true;
      case "Escape":
        this.setTool("navigate");
        return true;
      default:
        return false;
    }
  }

  installInput() {
    // keys in this frame (after a click on the images) ...
    window.addEventListener("keydown", (e) => {
      if (this.handleKey(e)) { e.preventDefault(); e.stopPropagation(); }
      else if (!e.ctrlKey && !e.metaKey && !e.altKey && e.key.length === 1) this.forwardKey(e);
    }, true);
    // ... and in the page around it, unless the reader is typing in a field there
    this.installParentKeys();
    const container = this.stage;
    container.addEventListener("wheel", (e) => {
      if (!this.images.volume) return;
      e.preventDefault();
      e.stopPropagation();
      if (e.ctrlKey || e.metaKey) {
        this.zoomBy(e.deltaY < 0 ? 1.1 : 1 / 1.1);
        return;
      }
      const plane = this.tileAt(e.clientX, e.clientY);
      if (!plane) return;
      this.activePlane = plane;
      const delta = e.deltaY < 0 ? 1 : e.deltaY > 0 ? -1 : 0;
      if (delta) this.step(plane, delta, { timeStamp: e.timeStamp, kind: "wheel" });
    }, { capture: true, passive: false });
    container.addEventListener("pointermove", (e) => {
      this.mouse = [e.clientX, e.clientY];
      const plane = this.tileAt(e.clientX, e.clientY);
      if (plane && this.layout !== "1up") this.activePlane = plane;
      this.drawStatus();
    });
    container.addEventListener("pointerleave", () => { this.mouse = null; this.drawStatus(); });
    container.addEventListener("pointerdown", (e) => {
      const plane = this.tileAt(e.clientX, e.clientY);
      if (plane) this.activePlane = plane;
    }, true);
    window.addEventListener("pointerup", () => { this.readWindowFromImage(); this.drawHud(); });
    container.addEventListener("dblclick", (e) => {
      const plane = this.tileAt(e.clientX, e.clientY);
      if (plane) this.setLayout(this.layout === "1up" ? "3up" : plane);
    });
    container.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  installParentKeys() {
    let doc;
    let parentOrigin;
    try {
      doc = window.parent.document;
      parentOrigin = window.parent.performance.timeOrigin;
    } catch {
      return; // another origin: keys work after a click on the images only
    }
    const offset = parentOrigin - performance.timeOrigin;
    const listener = (e) => {
      const frame = window.frameElement;
      if (!frame || !frame.isConnected) { doc.removeEventListener("keydown", listener, true); return; }
      const t = e.target;
      const tag = t && t.tagName;
      if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) return;
      if (t && t.closest && t.closest("[role=dialog],[role=listbox],[role=slider],[data-baseweb=popover]")) return;
      if (this.handleKey(e, offset)) { e.preventDefault(); e.stopPropagation(); }
    };
    doc.addEventListener("keydown", listener, true);
    window.addEventListener("pagehide", () => doc.removeEventListener("keydown", listener, true));
  }

  /** Keys the viewer does not use (e.g. N for "next unreviewed") go to the page's own shortcuts. */
  forwardKey(e) {
    try {
      const doc = window.parent.document;
      doc.dispatchEvent(new window.parent.KeyboardEvent("keydown", { key: e.key, code: e.code, shiftKey: e.shiftKey, bubbles: true }));
    } catch {
      /* another origin: nothing to forward to */
    }
  }

  // --------------------------------------------------------- after change
  afterChange(kind, event) {
    if (event) {
      const drawn = performance.now();
      const record = { kind: event.kind, t0: event.timeStamp, drawn, frame: null, slice: this.voxelOfCrosshair()[2] };
      this.stats.changes.push(record);
      if (this.stats.changes.length > 2000) this.stats.changes.splice(0, 1000);
      requestAnimationFrame(() => requestAnimationFrame((t) => { record.frame = t; }));
    }
    this.drawHud();
    this.reportSoon();
  }

  reportSoon(delay = STATE_DEBOUNCE_MS) {
    clearTimeout(this.stateTimer);
    this.stateTimer = setTimeout(() => this.report(), delay);
  }

  report() {
    if (!this.spec) return;
    const have = {};
    for (const [slot, v] of Object.entries(this.images)) have[slot] = v.id;
    const state = this.images.volume ? {
      zyx: [...this.voxelOfCrosshair()].reverse(),
      window: this.window,
      layout: this.layout === "1up" ? this.single : this.layout,
      zoom: Number(this.nv.scene.pan2Dxyzmm[3].toFixed(3)),
    } : null;
    this.seq += 1;
    this.onState({ seq: this.seq, have, need: [...this.missing], state, case: this.spec.case?.id ?? null });
  }

  // ----------------------------------------------------------------- HUD
  showMessage(text) {
    this.message.textContent = text;
    this.message.style.display = "flex";
  }

  hideMessage() {
    this.message.style.display = "none";
  }

  /** mm per CSS pixel in tile `i`, measured through NiiVue's own mapping. */
  tileScale(tile, rect, dpr) {
    const [l, t, w, h] = tile.leftTopWidthHeight;
    const cx = l + w / 2;
    const cy = t + h / 2;
    const a = this.nv.canvasPos2frac([cx - 20 * dpr, cy]);
    const b = this.nv.canvasPos2frac([cx + 20 * dpr, cy]);
    if (a[0] < 0 || b[0] < 0) return null;
    const ma = this.nv.frac2mm(a);
    const mb = this.nv.frac2mm(b);
    const d = Math.hypot(ma[0] - mb[0], ma[1] - mb[1], ma[2] - mb[2]);
    return d > 0 ? 40 / d : null; // CSS px per mm
  }

  drawHud() {
    if (!this.nv || !this.images.volume) { this.hud.replaceChildren(); this.drawStatus(); return; }
    const dpr = this.nv.uiData.dpr || window.devicePixelRatio || 1;
    const rect = this.canvas.getBoundingClientRect();
    const v = this.voxelOfCrosshair();
    const [ni, nj, nk] = this.dims();
    const interp = new Set(this.spec.interpolated || []);
    const items = [];
    for (const tile of this.nv.screenSlices || []) {
      if (tile.axCorSag > 2) continue;
      const plane = PLANES[tile.axCorSag];
      const [l, t, w, h] = tile.leftTopWidthHeight.map((x) => x / dpr);
      if (w < 20 || h < 20) continue;
      const { axis } = alignedAxis(this.affine, PLANE_WORLD_AXIS[plane]);
      const n = [ni, nj, nk][axis];
      const label = el("div", { class: "tile-label", style: `left:${l + 6}px;top:${t + 4}px`, "data-plane": plane },
        `${plane[0].toUpperCase()}${plane.slice(1)}  ${v[axis] + 1}/${n}`);
      items.push(label);
      if (plane === "axial" && interp.has(v[2])) {
        items.push(el("div", { class: "badge interp", style: `left:${l + 6}px;top:${t + 26}px`, "data-interpolated": String(v[2]) },
          `INTERPOLATED slice ${v[2]} — not acquired`));
      }
      const pxPerMm = this.tileScale(tile, rect, dpr);
      if (pxPerMm) {
        const mm = niceLength(pxPerMm, Math.min(130, w / 4));
        const len = mm * pxPerMm;
        items.push(el("div", { class: "scalebar", style: `left:${l + w - len - 14}px;top:${t + h - 26}px;width:${len}px`, "data-mm": String(mm) },
          el("span", {}, `${mm} mm`)));
      }
    }
    this.hud.replaceChildren(...items);
    this.drawStatus();
  }

  drawStatus() {
    if (!this.images.volume) { this.status.textContent = ""; return; }
    const v = this.voxelOfCrosshair();
    const parts = [];
    if (this.mouse) {
      const rect = this.canvas.getBoundingClientRect();
      const dpr = this.nv.uiData.dpr || window.devicePixelRatio || 1;
      const frac = this.nv.canvasPos2frac([(this.mouse[0] - rect.left) * dpr, (this.mouse[1] - rect.top) * dpr]);
      if (frac[0] >= 0) {
        const mm = this.nv.frac2mm(frac);
        const p = apply4(this.inv, [mm[0], mm[1], mm[2]]).map((x) => Math.round(x));
        const hu = this.raw.value(p[0], p[1], p[2]);
        parts.push(`<b class="hu" data-hu="${hu}">${fmt(hu)} HU</b> at (${fmt(-mm[0], 1)}, ${fmt(-mm[1], 1)}, ${fmt(mm[2], 1)}) mm`);
      }
    }
    const c = this.nv.frac2mm(this.nv.scene.crosshairPos);
    parts.push(`crosshair slice ${v[2]} · (${fmt(-c[0], 1)}, ${fmt(-c[1], 1)}, ${fmt(c[2], 1)}) mm LPS`);
    if (this.window) parts.push(`W${fmt(this.window[0])} L${fmt(this.window[1])}`);
    parts.push(`zoom ${this.nv.scene.pan2Dxyzmm[3].toFixed(2)}×`);
    parts.push(`<span class="hint">${TOOLS[this.tool].hint} · right drag: W/L · middle or Ctrl+drag: pan · Shift+drag: ruler · wheel/↑↓: slices</span>`);
    this.status.innerHTML = parts.join(" · ");
    document.body.dataset.slice = String(v[2]);
  }
}
