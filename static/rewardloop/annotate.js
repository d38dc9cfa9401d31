// Keyboard-first annotation. Every button in the card with data-key="x" is pressed by the key x;
// "?" toggles the help overlay, "c" focuses the comment box, "g" opens or closes the guidelines,
// Escape leaves the comment box or closes the help. No key acts while a request is in flight.
(function () {
  "use strict";

  function help() { return document.getElementById("help"); }

  function toggleHelp(show) {
    var box = help();
    if (!box) return;
    box.hidden = show === undefined ? !box.hidden : !show;
  }

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest && event.target.closest("[data-help-toggle]");
    if (toggle) {
      event.preventDefault();
      toggleHelp();
    } else if (event.target === help()) {
      toggleHelp(false);
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable);
    if (event.key === "Escape") {
      if (typing) target.blur();
      toggleHelp(false);
      return;
    }
    if (typing) return;
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key === "?") {
      event.preventDefault();
      toggleHelp();
      return;
    }
    if (key === "g") {
      var guidelines = document.getElementById("guidelines");
      if (guidelines) {
        event.preventDefault();
        guidelines.open = !guidelines.open;
      }
      return;
    }
    var card = document.getElementById("card");
    if (!card || card.querySelector(".htmx-request")) return;
    if (key === "c") {
      var comment = card.querySelector("textarea[name=comment]");
      if (comment && !comment.disabled) {
        event.preventDefault();
        comment.focus();
      }
      return;
    }
    var button = card.querySelector('button[data-key="' + CSS.escape(key) + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      toggleHelp(false);
      // htmx wires a freshly swapped card up only after its settle delay (20 ms); a fast key
      // must not fall through to a plain form post (a full reload), so wire it up now.
      if (window.htmx) window.htmx.process(card);
      button.click();
    }
  });
})();
