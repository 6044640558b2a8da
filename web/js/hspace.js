// hspace frontend extension: draws what the hspace nodes report on the node itself (no widgets, so the
// saved widgets_values of a workflow never change):
//  - hspace_info (Load Direction, Direction Info): the direction's metadata, one line per field
//  - hspace_spectrum (PCA Directions): a bar chart of the explained variance per component
//  - hspace_sweep (Strength Sweep): the grid arrives as a preview image (drawn by ComfyUI); the node grows so
//    that the whole grid fits below the widgets, and widens to 64 px per column when nothing is in the way
//  - text (Save Direction, Save Trajectory, Compare Directions): the paths written / the report text
// What is drawn goes right below the widgets; a node only ever grows (never shrinks, never moves) and only
// when what it shows does not fit. Tested in ComfyUI 0.33 with frontend 1.49 (LiteGraph canvas).
// This file is served at /extensions/<pack>/js/hspace.js, hence three levels up to /scripts/app.js.
import { app } from "../../../scripts/app.js";

const LINE_HEIGHT = 13;
const MAX_LINES = 40;
const SPECTRUM_HEIGHT = 90;
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

// The height of the title-less body that LiteGraph needs for the slots and widgets.
function contentHeight(node) {
  return node.computeSize()[1];
}

function extraHeight(node) {
  const lines = node.hspaceLines?.length ?? 0;
  const spectrum = node.hspaceSpectrum?.length ? SPECTRUM_HEIGHT + PAD : 0;
  return (lines ? lines * LINE_HEIGHT + PAD : 0) + spectrum;
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

// Shortens a line to `width` pixels by cutting its middle, so a path keeps its file name.
function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let [head, tail] = [Math.ceil(text.length / 2), Math.floor(text.length / 2)];
  while (head + tail > 1) {
    if (head >= tail) head--;
    else tail--;
    const short = `${text.slice(0, head)}…${text.slice(text.length - tail)}`;
    if (ctx.measureText(short).width <= width) return short;
  }
  return "…";
}

function drawLines(node, ctx, top) {
  ctx.fillStyle = "#ccc";
  ctx.font = "11px monospace";
  const width = node.size[0] - 2 * PAD;
  const fit = node.hspaceFit; // the shortened lines, kept until the lines or the node's width change
  if (fit?.source !== node.hspaceLines || fit.width !== width) {
    node.hspaceFit = { source: node.hspaceLines, width, lines: node.hspaceLines.map((line) => fitText(ctx, line, width)) };
  }
  node.hspaceFit.lines.forEach((line, i) => ctx.fillText(line, PAD, top + (i + 1) * LINE_HEIGHT));
}

function drawSpectrum(node, ctx, top) {
  const ratios = node.hspaceSpectrum;
  const width = node.size[0] - 2 * PAD;
  const barWidth = width / ratios.length;
  const peak = Math.max(...ratios, 1e-12);
  const labels = barWidth >= 16; // room for the component numbers under the bars
  const chartBottom = top + SPECTRUM_HEIGHT - (labels ? 12 : 2);
  const chartHeight = chartBottom - (top + 18);
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(PAD, top, width, SPECTRUM_HEIGHT);
  ctx.fillStyle = "#6fa8dc";
  ratios.forEach((r, i) => {
    const h = Math.max(chartHeight * (r / peak), 1);
    ctx.fillRect(PAD + i * barWidth + 1, chartBottom - h, Math.max(barWidth - 2, 1), h);
  });
  ctx.fillStyle = "#ddd";
  ctx.font = "10px sans-serif";
  if (labels) {
    ctx.textAlign = "center";
    ratios.forEach((_, i) => ctx.fillText(String(i), PAD + (i + 0.5) * barWidth, top + SPECTRUM_HEIGHT - 2));
    ctx.textAlign = "left";
  }
  const total = ratios.reduce((a, b) => a + b, 0);
  const title = `explained variance: PC0 ${(100 * ratios[0]).toFixed(1)}%, all ${ratios.length}: ${(100 * total).toFixed(1)}%`;
  ctx.fillText(fitText(ctx, title, width - 8), PAD + 4, top + 12);
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
      if (message?.hspace_spectrum?.length) this.hspaceSpectrum = message.hspace_spectrum[0].explained_variance_ratio;
      const lines = reportLines(message);
      if (lines) this.hspaceLines = lines;
      let [width, height] = [this.size[0], contentHeight(this) + extraHeight(this)];
      if (message?.hspace_sweep?.length) [width, height] = sweepSize(this, message.hspace_sweep[0], width);
      if (width > this.size[0] || height > this.size[1]) {
        this.setSize([Math.max(width, this.size[0]), Math.max(height, this.size[1])]);
      }
      (this.graph ?? app.graph).setDirtyCanvas(true, true);
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed || !extraHeight(this)) return;
      ctx.save();
      let top = contentHeight(this);
      if (this.hspaceLines?.length) {
        drawLines(this, ctx, top);
        top += this.hspaceLines.length * LINE_HEIGHT + PAD;
      }
      if (this.hspaceSpectrum?.length) drawSpectrum(this, ctx, top);
      ctx.restore();
    };
  },
});
