// The console's only script: copy buttons. Nothing here fetches, opens or renders a URL.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) { return; }
  navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
    button.textContent = "Copied";
  }, function () {
    button.textContent = "Copy failed: select the text instead";
  });
});
