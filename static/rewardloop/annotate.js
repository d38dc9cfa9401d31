// Keyboard-first annotation: every button with data-key="x" is pressed by the key x.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) return;
    var card = document.getElementById("card");
    if (!card) return;
    var button = card.querySelector('button[data-key="' + CSS.escape(event.key.toLowerCase()) + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
})();
