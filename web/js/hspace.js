// hspace frontend extension: shows what the hspace nodes report, in the classic LiteGraph canvas and in the Vue
// ("Nodes 2.0") renderer alike, so nothing is drawn on the canvas:
//  - hspace_info (Load Direction, Direction Info) and text (Save Direction, Save Trajectory, Compare
//    Directions, Jacobian / Pullback solver warnings): a read-only text DOM widget below the other widgets,
//    clipped to the node (scrolls when long), never serialized into widgets_values or the prompt
//  - PCA Directions: its spectrum arrives as a preview image (a PNG chart made in Python); the node grows so
//    that the chart fits below the widgets
//  - hspace_sweep (Strength Sweep): the grid arrives as a preview image (drawn by ComfyUI); the node grows so
//    that the whole grid fits below the widgets, and widens to 64 px per column when nothing is in the way
// A node only ever grows (never shrinks, never moves) and only when what it shows does not fit.
// This file is served at /extensions/<pack>/js/hspace.js, hence three levels up to /scripts/app.js.
import { app } from "../../../scripts/app.js";

const LINE_HEIGHT = 13;
const MAX_LINES = 40;
const VISIBLE_LINES = 16; // the text widget scrolls beyond this
const [SPECTRUM_WIDTH, SPECTRUM_HEIGHT] = [400, 180]; // nodes/_display.py's chart
const PAD = 8;
const SWEEP_CELL = 64;
const PREVIEW_CAPTION = 24; // ComfyUI writes the image size ("448 × 270") under a preview
const titleHeight = () => globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;

// One line per field; a set of several directions gets a "[i]" line before each direction's fields.
function infoLines(infos) {
  const fields = (info, indent) => Object.entries(info).map(([k, v]) => `${indent}${k}: ${JSON.stringify(v)}`);
  if (infos.length === 1) return fields(infos[0], "");
  return infos.flatMap((info, i) => [`[${i}]`, ...fields(info, "  ")]);
}

function reportLines(message) {
  let lines = null;
  if (message?.hspace_info?.length) lines = infoLines(message.hspace_info);
  else if (message?.text?.length) lines = message.text.join("\n").split("\n");
  if (lines && lines.length > MAX_LINES) {
    lines = [...lines.slice(0, MAX_LINES - 1), `… ${lines.length - MAX_LINES + 1} more lines`];
  }
  return lines;
}

// The height of the title-less body that LiteGraph needs for the slots and widgets (the text widget included).
function contentHeight(node) {
  return node.computeSize()[1];
}

// Does the rectangle [x, y, w, h] (graph coordinates, title included) touch another node?
function overlapsOthers(node, x, y, w, h) {
  const title = titleHeight();
  return (node.graph ?? app.graph)._nodes.some((other) => {
    if (other === node) return false;
    const [ox, oy] = [other.pos[0], other.pos[1] - title];
    const [ow, oh] = [other.size[0], (other.flags?.collapsed ? 0 : other.size[1]) + title];
    return x < ox + ow && ox < x + w && y < oy + oh && oy < y + h;
  });
}

// The read-only text widget of a node, made on its first report.
function reportWidget(node) {
  if (node.hspaceReport) return node.hspaceReport;
  const element = document.createElement("pre");
  Object.assign(element.style, {
    margin: "0", padding: "2px 4px", font: "11px monospace", color: "#ccc", background: "rgba(0,0,0,0.2)",
    whiteSpace: "pre", overflow: "auto", boxSizing: "border-box", width: "100%", height: "100%",
    pointerEvents: "auto", userSelect: "text",
  });
  const height = () => Math.min(node.hspaceLineCount ?? 1, VISIBLE_LINES) * LINE_HEIGHT + PAD;
  node.hspaceReport = node.addDOMWidget("hspace_report", "hspace_report", element, {
    serialize: false, hideOnZoom: false, getValue: () => element.textContent, setValue: () => {},
    getMinHeight: height, getMaxHeight: height,
  });
  node.hspaceReport.serialize = false;
  node.hspaceReport.element = element;
  return node.hspaceReport;
}

// The height a preview image of pixel size [w, h] takes under the widgets at the node's width.
function previewHeight(node, w, h) {
  return ((node.size[0] - 2 * PAD) * h) / w + PREVIEW_CAPTION;
}

// The node size that shows the sweep grid below the widgets: 64 px per column or more when the wider node
// touches no other node, else the grid scaled to the node's width.
function sweepSize(node, sweep, width) {
  const columns = sweep.strengths.length;
  const [gridW, gridH] = [sweep.width ?? columns * SWEEP_CELL, sweep.height ?? sweep.rows * SWEEP_CELL];
  const wide = Math.max(width, columns * SWEEP_CELL + 2 * PAD);
  const fits = (w) => {
    const h = contentHeight(node) + ((w - 2 * PAD) * gridH) / gridW + PREVIEW_CAPTION;
    return [w, h];
  };
  const [w, h] = fits(wide);
  const title = titleHeight();
  if (wide > width && overlapsOthers(node, node.pos[0] + width, node.pos[1] - title, w - width, Math.max(h, node.size[1]) + title)) {
    return fits(width);
  }
  return [w, h];
}

app.registerExtension({
  name: "hspace.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("HSpace")) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const lines = reportLines(message);
      if (lines) {
        this.hspaceLineCount = lines.length;
        reportWidget(this).element.textContent = lines.join("\n");
      }
      let [width, height] = [this.size[0], contentHeight(this)];
      if (message?.hspace_sweep?.length) [width, height] = sweepSize(this, message.hspace_sweep[0], width);
      else if (message?.hspace_spectrum?.length && message?.images?.length) {
        height += previewHeight(this, SPECTRUM_WIDTH, SPECTRUM_HEIGHT);
      }
      if (width > this.size[0] || height > this.size[1]) {
        this.setSize([Math.max(width, this.size[0]), Math.max(height, this.size[1])]);
      }
      (this.graph ?? app.graph).setDirtyCanvas(true, true);
    };
  },
});
