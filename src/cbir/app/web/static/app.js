// Drag and drop: a file dropped on the drop zone is put in the file input and searched at once.
(function () {
  "use strict";
  var zone = document.getElementById("drop-zone");
  var input = document.getElementById("image-input");
  var form = document.getElementById("query-form");
  if (!zone || !input || !form) { return; }
  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      form.submit();
    }
  });
})();

// Region queries: drag a box on the query image (or type its corners) and search by that region. The box is in
// pixels of the image as shown (its natural size, sent as box_size); the server scales it to the full image.
(function () {
  "use strict";
  var frame = document.getElementById("query-frame");
  var image = document.getElementById("query-image");
  var overlay = document.getElementById("box-overlay");
  var form = document.getElementById("region-form");
  if (!frame || !image || !overlay || !form) { return; }
  var fields = ["x0", "y0", "x1", "y1"].map(function (n) { return document.getElementById("box-" + n); });
  var start = null;

  // where the image's content sits inside the frame (object-fit: contain), in CSS pixels
  function content() {
    var w = image.naturalWidth || 1, h = image.naturalHeight || 1;
    var s = Math.min(image.clientWidth / w, image.clientHeight / h);
    return {w: w, h: h, s: s, ox: image.offsetLeft + (image.clientWidth - w * s) / 2,
            oy: image.offsetTop + (image.clientHeight - h * s) / 2};
  }
  function toPixels(event) {
    var c = content(), rect = frame.getBoundingClientRect();
    var x = (event.clientX - rect.left - c.ox) / c.s, y = (event.clientY - rect.top - c.oy) / c.s;
    return [Math.max(0, Math.min(c.w, x)), Math.max(0, Math.min(c.h, y))];
  }
  function draw(box) {
    var c = content();
    overlay.style.left = (c.ox + box[0] * c.s) + "px";
    overlay.style.top = (c.oy + box[1] * c.s) + "px";
    overlay.style.width = ((box[2] - box[0]) * c.s) + "px";
    overlay.style.height = ((box[3] - box[1]) * c.s) + "px";
    overlay.hidden = false;
  }
  function setSize() {
    var c = content();
    document.getElementById("box-size-field").value = c.w + "x" + c.h;
    document.getElementById("box-size-text").textContent = c.w + "\u00d7" + c.h;
    fields.forEach(function (f, i) { f.max = (i % 2 ? c.h : c.w); });
  }
  function typed() {
    var box = fields.map(function (f) { return parseInt(f.value, 10); });
    if (box.every(function (v) { return !isNaN(v); }) && box[2] > box[0] && box[3] > box[1]) { draw(box); }
  }
  if (image.complete) { setSize(); } else { image.addEventListener("load", setSize); }
  fields.forEach(function (f) { f.addEventListener("input", typed); });
  frame.addEventListener("mousedown", function (event) {
    event.preventDefault();
    start = toPixels(event);
  });
  window.addEventListener("mousemove", function (event) {
    if (!start) { return; }
    var p = toPixels(event);
    draw([Math.min(start[0], p[0]), Math.min(start[1], p[1]), Math.max(start[0], p[0]), Math.max(start[1], p[1])]);
  });
  window.addEventListener("mouseup", function (event) {
    if (!start) { return; }
    var p = toPixels(event);
    var box = [Math.floor(Math.min(start[0], p[0])), Math.floor(Math.min(start[1], p[1])),
               Math.ceil(Math.max(start[0], p[0])), Math.ceil(Math.max(start[1], p[1]))];
    start = null;
    if (box[2] - box[0] < 2 || box[3] - box[1] < 2) { overlay.hidden = true; return; }
    box.forEach(function (v, i) { fields[i].value = v; });
    draw(box);
    document.getElementById("region-button").focus();
  });
  form.addEventListener("submit", function () {
    setSize();
    document.getElementById("box-field").value = fields.map(function (f) { return f.value; }).join(",");
  });
})();

// Feedback marks: a marked result is framed (relevant green, not relevant red) as soon as it is marked.
(function () {
  "use strict";
  var form = document.getElementById("refine-form");
  if (!form) { return; }
  form.addEventListener("change", function (event) {
    var li = event.target.closest ? event.target.closest("li.result") : null;
    if (!li) { return; }
    li.classList.toggle("marked-relevant", event.target.value === "relevant");
    li.classList.toggle("marked-irrelevant", event.target.value === "irrelevant");
  });
})();
