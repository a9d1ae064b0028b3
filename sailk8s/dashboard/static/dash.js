// Draws each training stage's loss curve with the vendored uPlot (data inlined by the server).
(function () {
  document.querySelectorAll("div.loss").forEach(function (el) {
    var raw = el.nextElementSibling;
    if (!raw || typeof uPlot === "undefined") { return; }
    var pairs = JSON.parse(raw.textContent);
    var data = [pairs.map(function (p) { return p[0]; }), pairs.map(function (p) { return p[1]; })];
    new uPlot({ width: Math.min(720, el.clientWidth || 720), height: 220,
                scales: { x: { time: false } },
                series: [{ label: "step" }, { label: "loss", stroke: "#3b82f6", width: 2 }] }, data, el);
  });
})();
