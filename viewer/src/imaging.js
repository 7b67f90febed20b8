// The image viewport: Cornerstone3D (window/level, zoom, pan) with secondreader's overlay (the
// heatmap layer and region outlines) drawn in image coordinates through the viewport's camera.
import {
  Enums as CoreEnums,
  RenderingEngine,
  init as coreInit,
  metaData,
} from '@cornerstonejs/core';
import {
  Enums as ToolEnums,
  PanTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as toolsInit,
} from '@cornerstonejs/tools';
import { init as dicomLoaderInit } from '@cornerstonejs/dicom-image-loader';

import { authHeaders } from './api.js';

const ENGINE_ID = 'secondreader-engine';
const VIEWPORT_ID = 'secondreader-main';
const TOOL_GROUP_ID = 'secondreader-tools';
const TOOLS = { WindowLevel: WindowLevelTool, Pan: PanTool, Zoom: ZoomTool };
const { MouseBindings } = ToolEnums;

let initialised = null;
let planeLookup = false;

/**
 * Real radiographs often carry PixelSpacing "0\\0" (or none): the image plane then has no extent
 * and nothing renders. Such a plane gets 1 mm per pixel, flagged as default values (the image is
 * shown as pixels, uncalibrated; the result's area_mm2 is null for it as well).
 */
function planeWithUsableSpacing(type, imageId) {
  if (type !== 'imagePlaneModule' || planeLookup) return undefined;
  planeLookup = true;
  let plane;
  try {
    plane = metaData.get(type, imageId);
  } finally {
    planeLookup = false;
  }
  if (!plane || (plane.rowPixelSpacing > 0 && plane.columnPixelSpacing > 0)) return plane;
  return { ...plane, rowPixelSpacing: 1, columnPixelSpacing: 1, pixelSpacing: [1, 1], usingDefaultValues: true };
}

function initialise() {
  if (!initialised) {
    initialised = (async () => {
      await coreInit();
      // The loader's requests carry the key in a header (beforeSend), never in the URL.
      dicomLoaderInit({ maxWebWorkers: 1, beforeSend: () => authHeaders() });
      metaData.addProvider(planeWithUsableSpacing, 100000);
      toolsInit();
      Object.values(TOOLS).forEach((tool) => addTool(tool));
    })();
  }
  return initialised;
}

export class ImageView {
  /**
   * @param {HTMLElement} element the Cornerstone viewport element
   * @param {HTMLCanvasElement} overlay a 2-D canvas stacked over it (pointer-events: none)
   */
  constructor(element, overlay) {
    this.element = element;
    this.overlay = overlay;
    this.engine = null;
    this.viewport = null;
    this.primaryTool = 'WindowLevel';
    this.layer = null; // ImageBitmap of the heatmap layer (covers the whole source grid)
    this.layerVisible = true;
    this.opacity = 0.5;
    this.regions = []; // [{id, bbox: [r0, c0, r1, c1], finding}]
    this.selectedRegion = null;
    this.imageId = null;
    this.onRendered = () => this.drawOverlay();
  }

  async open(imageId) {
    await initialise();
    if (!this.engine) {
      this.engine = new RenderingEngine(ENGINE_ID);
      this.engine.enableElement({
        viewportId: VIEWPORT_ID,
        type: CoreEnums.ViewportType.STACK,
        element: this.element,
        defaultOptions: { background: [0, 0, 0] },
      });
      this.viewport = this.engine.getViewport(VIEWPORT_ID);
      const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
      Object.values(TOOLS).forEach((tool) => group.addTool(tool.toolName));
      group.addViewport(VIEWPORT_ID, ENGINE_ID);
      this.group = group;
      this.bindTools();
      this.element.addEventListener(CoreEnums.Events.IMAGE_RENDERED, this.onRendered);
      this.element.addEventListener('contextmenu', (event) => event.preventDefault());
      this.resizeObserver = new ResizeObserver(() => {
        this.engine.resize(true, false);
        this.drawOverlay();
      });
      this.resizeObserver.observe(this.element);
    }
    this.imageId = null;
    this.element.dataset.rendered = 'false';
    await this.viewport.setStack([imageId], 0);
    this.imageId = imageId;
    // What Reset returns to (the header's window, or the loader's); StackViewport's own
    // resetProperties() loses MONOCHROME1 inversion, so it is not used.
    const { voiRange, invert } = this.viewport.getProperties();
    this.initial = { voiRange: voiRange ? { ...voiRange } : undefined, invert };
    this.viewport.render();
  }

  /** Left button: the chosen tool; middle: pan; right and wheel: zoom. */
  bindTools() {
    const bindings = {
      WindowLevel: [],
      Pan: [{ mouseButton: MouseBindings.Auxiliary }],
      Zoom: [{ mouseButton: MouseBindings.Secondary }, { mouseButton: MouseBindings.Wheel }],
    };
    bindings[this.primaryTool].push({ mouseButton: MouseBindings.Primary });
    for (const [name, tool] of Object.entries(TOOLS)) {
      this.group.setToolPassive(tool.toolName, { removeAllBindings: true });
      if (bindings[name].length) this.group.setToolActive(tool.toolName, { bindings: bindings[name] });
    }
  }

  setPrimaryTool(name) {
    if (!TOOLS[name]) return;
    this.primaryTool = name;
    if (this.group) this.bindTools();
  }

  reset() {
    if (!this.viewport) return;
    if (this.initial?.voiRange) {
      this.viewport.setProperties({ voiRange: { ...this.initial.voiRange }, invert: this.initial.invert });
    }
    this.viewport.resetCamera();
    this.viewport.render();
  }

  zoomBy(factor) {
    if (!this.viewport) return;
    this.viewport.setZoom(this.viewport.getZoom() * factor);
    this.viewport.render();
  }

  panBy(dx, dy) {
    if (!this.viewport) return;
    const [x, y] = this.viewport.getPan();
    this.viewport.setPan([x + dx, y + dy]);
    this.viewport.render();
  }

  /** Window/level from the keyboard: width times ``widthFactor``, centre moved by ``centreShift`` widths. */
  adjustWindow(widthFactor, centreShift) {
    if (!this.viewport) return;
    const { voiRange } = this.viewport.getProperties();
    if (!voiRange) return;
    const width = Math.max(1, (voiRange.upper - voiRange.lower) * widthFactor);
    const centre = (voiRange.upper + voiRange.lower) / 2 + centreShift * width;
    this.viewport.setProperties({ voiRange: { lower: centre - width / 2, upper: centre + width / 2 } });
    this.viewport.render();
  }

  setLayer(bitmap) {
    this.layer = bitmap;
    this.overlay.dataset.layer = bitmap ? 'loaded' : 'none';
    this.drawOverlay();
  }

  setOverlay({ visible = this.layerVisible, opacity = this.opacity } = {}) {
    this.layerVisible = visible;
    this.opacity = opacity;
    this.drawOverlay();
  }

  setRegions(regions, selected) {
    this.regions = regions;
    this.selectedRegion = selected;
    this.drawOverlay();
  }

  /** Canvas (CSS pixel) position of a point in continuous image coordinates (column, row). */
  imageToCanvas(imageData, column, row) {
    // Index space has pixel centres at integers: the corner of pixel (0, 0) is (-0.5, -0.5).
    const world = imageData.indexToWorld([column - 0.5, row - 0.5, 0]);
    return this.viewport.worldToCanvas(world);
  }

  drawOverlay() {
    const canvas = this.overlay;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio);
    const height = Math.round(canvas.clientHeight * ratio);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const data = this.viewport?.getImageData?.();
    if (!data || !data.imageData) return;
    // Marked once the image asked for is the one on screen (tests and screenshots wait for it).
    if (this.imageId) this.element.dataset.rendered = 'true';
    const [columns, rows] = data.dimensions;
    const topLeft = this.imageToCanvas(data.imageData, 0, 0);
    const topRight = this.imageToCanvas(data.imageData, columns, 0);
    const bottomLeft = this.imageToCanvas(data.imageData, 0, rows);
    // Affine map from image coordinates (column, row) to device pixels of the overlay canvas.
    const a = ((topRight[0] - topLeft[0]) / columns) * ratio;
    const b = ((topRight[1] - topLeft[1]) / columns) * ratio;
    const c = ((bottomLeft[0] - topLeft[0]) / rows) * ratio;
    const d = ((bottomLeft[1] - topLeft[1]) / rows) * ratio;
    const e = topLeft[0] * ratio;
    const f = topLeft[1] * ratio;

    if (this.layer && this.layerVisible && this.opacity > 0) {
      // The layer covers the whole source grid at a uniform reduction: stretch it over it.
      ctx.save();
      ctx.setTransform(a * (columns / this.layer.width), b * (columns / this.layer.width),
        c * (rows / this.layer.height), d * (rows / this.layer.height), e, f);
      ctx.globalAlpha = this.opacity;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(this.layer, 0, 0);
      ctx.restore();
    }

    const toCanvas = (column, row) => [a * column + c * row + e, b * column + d * row + f];
    ctx.lineWidth = 2 * ratio;
    ctx.font = `${12 * ratio}px system-ui, sans-serif`;
    ctx.textBaseline = 'bottom';
    for (const region of this.regions) {
      const [r0, c0, r1, c1] = region.bbox;
      const corners = [toCanvas(c0, r0), toCanvas(c1, r0), toCanvas(c1, r1), toCanvas(c0, r1)];
      const selected = region.id === this.selectedRegion;
      ctx.strokeStyle = selected ? '#00e5ff' : 'rgba(0, 229, 255, 0.75)';
      ctx.setLineDash(selected ? [] : [6 * ratio, 4 * ratio]);
      ctx.lineWidth = (selected ? 3 : 2) * ratio;
      ctx.beginPath();
      corners.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.stroke();
      const [lx, ly] = corners[0];
      const label = region.id;
      const textWidth = ctx.measureText(label).width;
      ctx.fillStyle = 'rgba(0, 0, 0, 0.7)';
      ctx.fillRect(lx, ly - 16 * ratio, textWidth + 8 * ratio, 16 * ratio);
      ctx.fillStyle = '#00e5ff';
      ctx.fillText(label, lx + 4 * ratio, ly - 2 * ratio);
    }
    ctx.setLineDash([]);
  }
}
