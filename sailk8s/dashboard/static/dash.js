// Draws each training stage's loss curve, one series per sub-stage, with the vendored uPlot.
(function () {
  var colours = ["#3b82f6", "#16a34a", "#f59e0b", "#a855f7", "#dc2626", "#0891b2"];
  document.querySelectorAll("div.loss").forEach(function (el) {
    var raw = el.nextElementSibling;
    if (!raw || typeof uPlot === "undefined") { return; }
    var curve = JSON.parse(raw.textContent);
    var data = [curve.x].concat(curve.series.map(function (s) { return s.values; }));
    var series = [{ label: "step" }].concat(curve.series.map(function (s, i) {
      return { label: s.label, stroke: colours[i % colours.length], width: 2, spanGaps: false };
    }));
    new uPlot({ width: Math.min(720, el.clientWidth || 720), height: 220,
                scales: { x: { time: false } }, series: series }, data, el);
  });
})();
