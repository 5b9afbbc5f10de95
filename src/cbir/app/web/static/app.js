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
