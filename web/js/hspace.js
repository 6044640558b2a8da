// hspace frontend extension: shows what the hspace nodes report on the node itself.
//  - hspace_info (Load Direction, Direction Info): the direction's metadata as text
//  - hspace_spectrum (PCA Directions): a bar chart of the explained variance per component
//  - hspace_sweep (Strength Sweep): the strengths of the grid's columns
//  - text (Save Direction, Direction Info): the paths written / the info text
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const SPECTRUM_HEIGHT = 90;

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === "hspace_report");
  if (!widget) {
    widget = ComfyWidgets.STRING(node, "hspace_report", ["STRING", { multiline: true }], app).widget;
    widget.inputEl.readOnly = true;
    widget.inputEl.style.opacity = 0.8;
    widget.serialize = false; // not a real input: keep widgets_values stable
  }
  widget.value = text;
  node.setSize([Math.max(node.size[0], 280), node.computeSize()[1]]);
  app.graph.setDirtyCanvas(true, false);
}

function formatInfo(infos) {
  return infos
    .map((info, i) => [`[${i}]`, ...Object.entries(info).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`)].join("\n"))
    .join("\n");
}

function drawSpectrum(node, ctx) {
  const ratios = node.hspaceSpectrum;
  if (!ratios?.length) return;
  const pad = 8;
  const width = node.size[0] - 2 * pad;
  const top = node.size[1] - SPECTRUM_HEIGHT - pad;
  const barWidth = width / ratios.length;
  const peak = Math.max(...ratios, 1e-12);
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(pad, top, width, SPECTRUM_HEIGHT);
  ctx.fillStyle = "#6fa8dc";
  ratios.forEach((r, i) => {
    const h = (SPECTRUM_HEIGHT - 14) * (r / peak);
    ctx.fillRect(pad + i * barWidth + 1, top + SPECTRUM_HEIGHT - h, Math.max(barWidth - 2, 1), h);
  });
  ctx.fillStyle = "#ddd";
  ctx.font = "10px sans-serif";
  ctx.fillText(`explained variance, PC0 = ${(100 * ratios[0]).toFixed(1)}%`, pad + 4, top + 11);
  ctx.restore();
}

app.registerExtension({
  name: "hspace.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("HSpace")) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.hspace_spectrum?.length) {
        this.hspaceSpectrum = message.hspace_spectrum[0].explained_variance_ratio;
        this.setSize([Math.max(this.size[0], 260), this.computeSize()[1] + SPECTRUM_HEIGHT + 16]);
      }
      if (message?.hspace_info?.length) {
        showText(this, formatInfo(message.hspace_info));
      } else if (message?.hspace_sweep?.length) {
        const sweep = message.hspace_sweep[0];
        showText(this, `columns (strengths): ${sweep.strengths.map((s) => s.toFixed(2)).join(", ")}\nrows: ${sweep.rows}`);
      } else if (message?.text?.length) {
        showText(this, message.text.join("\n"));
      }
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.flags?.collapsed) drawSpectrum(this, ctx);
    };
  },
});
