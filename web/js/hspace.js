// hspace frontend extension: draws what the hspace nodes report on the node itself (no widgets, so the
// saved widgets_values of a workflow never change):
//  - hspace_info (Load Direction, Direction Info): the direction's metadata, one line per field
//  - hspace_spectrum (PCA Directions): a bar chart of the explained variance per component
//  - hspace_sweep (Strength Sweep): the grid arrives as a preview image; the node grows so that every column
//    (one per strength, 64 px or more) stays legible
//  - text (Save Direction, Save Trajectory, Direction Info): the paths written / the info text
import { app } from "../../scripts/app.js";

const LINE_HEIGHT = 13;
const MAX_LINES = 40;
const SPECTRUM_HEIGHT = 90;
const PAD = 8;
const SWEEP_CELL = 64;

function infoLines(infos) {
  return infos.flatMap((info, i) => [`[${i}]`, ...Object.entries(info).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`)]);
}

function reportLines(message) {
  if (message?.hspace_info?.length) return infoLines(message.hspace_info);
  if (message?.text?.length) return message.text.join("\n").split("\n");
  return null;
}

function extraHeight(node) {
  const lines = node.hspaceLines?.length ?? 0;
  const spectrum = node.hspaceSpectrum?.length ? SPECTRUM_HEIGHT + PAD : 0;
  return (lines ? lines * LINE_HEIGHT + PAD : 0) + spectrum;
}

function drawLines(node, ctx, top) {
  ctx.fillStyle = "#ccc";
  ctx.font = "11px monospace";
  node.hspaceLines.forEach((line, i) => ctx.fillText(line, PAD, top + (i + 1) * LINE_HEIGHT, node.size[0] - 2 * PAD));
}

function drawSpectrum(node, ctx, top) {
  const ratios = node.hspaceSpectrum;
  const width = node.size[0] - 2 * PAD;
  const barWidth = width / ratios.length;
  const peak = Math.max(...ratios, 1e-12);
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(PAD, top, width, SPECTRUM_HEIGHT);
  ctx.fillStyle = "#6fa8dc";
  ratios.forEach((r, i) => {
    const h = (SPECTRUM_HEIGHT - 14) * (r / peak);
    ctx.fillRect(PAD + i * barWidth + 1, top + SPECTRUM_HEIGHT - h, Math.max(barWidth - 2, 1), h);
  });
  ctx.fillStyle = "#ddd";
  ctx.font = "10px sans-serif";
  ctx.fillText(`explained variance per component, PC0 = ${(100 * ratios[0]).toFixed(1)}%`, PAD + 4, top + 11);
}

app.registerExtension({
  name: "hspace.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("HSpace")) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const before = extraHeight(this);
      if (message?.hspace_spectrum?.length) this.hspaceSpectrum = message.hspace_spectrum[0].explained_variance_ratio;
      const lines = reportLines(message);
      if (lines) this.hspaceLines = lines.slice(0, MAX_LINES);
      let [width, height] = [this.size[0], this.size[1] - before + extraHeight(this)];
      if (this.hspaceLines) width = Math.max(width, 320);
      if (message?.hspace_sweep?.length) {
        const sweep = message.hspace_sweep[0];
        width = Math.max(width, sweep.strengths.length * SWEEP_CELL + 2 * PAD);
        height = Math.max(height, this.computeSize()[1] + sweep.rows * SWEEP_CELL + 2 * LINE_HEIGHT);
      }
      this.setSize([width, height]);
      app.graph.setDirtyCanvas(true, false);
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed || !extraHeight(this)) return;
      ctx.save();
      let top = this.size[1] - extraHeight(this);
      if (this.hspaceLines?.length) {
        drawLines(this, ctx, top);
        top += this.hspaceLines.length * LINE_HEIGHT + PAD;
      }
      if (this.hspaceSpectrum?.length) drawSpectrum(this, ctx, top);
      ctx.restore();
    };
  },
});
