// The console's only script: copy buttons, and the assessment form's details shown for the
// verdict chosen. Nothing here fetches, opens or renders a URL.
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

// Only the chosen verdict's details are shown and sent: the other fieldset is disabled, so a
// value picked before the analyst changed their mind does not go with the verdict.
function showVerdictDetails(form) {
  var chosen = form.querySelector("input[name=verdict]:checked");
  form.querySelectorAll("fieldset[data-verdict]").forEach(function (set) {
    var on = !chosen || set.getAttribute("data-verdict") === chosen.value;
    set.disabled = !on;
    set.hidden = !on;
  });
}
document.addEventListener("change", function (event) {
  if (event.target.name === "verdict" && event.target.form) {
    showVerdictDetails(event.target.form);
  }
});
document.querySelectorAll("#assess-form").forEach(showVerdictDetails);
