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

  // Ranking cards: each output's "next place" button (keys 1..k) gives it the next free place;
  // when one output is left it takes the last place; Backspace takes back the highest place given.
  // The places live in the form's <select>s, which also work by mouse and without script.
  function rankSelects(card) { return Array.prototype.slice.call(card.querySelectorAll("select.rank-place")); }

  function rankRefresh(card) {
    var selects = rankSelects(card);
    var byPlace = [];
    selects.forEach(function (select) {
      var item = select.closest(".ranked-output");
      if (item) item.classList.toggle("placed", select.value !== "");
      if (select.value) byPlace[Number(select.value) - 1] = item.querySelector(".rank-pick kbd").textContent;
    });
    var summary = card.querySelector("#rank-summary");
    if (!summary) return;
    var given = byPlace.filter(function (x) { return x; });
    summary.textContent = given.length
      ? "Best to worst: " + given.join(" › ") + (given.length === selects.length ? " — Enter submits." : "")
      : "Press the numbers of the outputs from best to worst.";
  }

  function rankPick(card, completionId) {
    var selects = rankSelects(card);
    var select = card.querySelector('select.rank-place[data-completion-id="' + CSS.escape(completionId) + '"]');
    if (!select || select.value) return;
    var used = selects.filter(function (s) { return s.value; }).length;
    select.value = String(used + 1);
    var left = selects.filter(function (s) { return !s.value; });
    if (left.length === 1) left[0].value = String(selects.length);
    rankRefresh(card);
  }

  function rankBack(card) {
    var selects = rankSelects(card);
    var used = selects.filter(function (s) { return s.value; });
    if (!used.length) return;
    var last = used.reduce(function (a, b) { return Number(a.value) > Number(b.value) ? a : b; });
    last.value = "";
    // A place that filled itself (the last output) goes with the one before it.
    if (used.length === selects.length) {
      used = selects.filter(function (s) { return s.value; });
      last = used.reduce(function (a, b) { return Number(a.value) > Number(b.value) ? a : b; });
      last.value = "";
    }
    rankRefresh(card);
  }

  // Rubric cards: 1-5 scores the highlighted criterion and highlights the next; Backspace goes back
  // one criterion. The scores are the form's radio buttons, which also work by mouse.
  function rubricItems(card) { return Array.prototype.slice.call(card.querySelectorAll(".criterion")); }

  function rubricHighlight(card, index) {
    rubricItems(card).forEach(function (item, i) { item.classList.toggle("current", i === index); });
  }

  function rubricCurrent(card) {
    var items = rubricItems(card);
    for (var i = 0; i < items.length; i++) if (items[i].classList.contains("current")) return i;
    return items.length;
  }

  function rubricScore(card, value) {
    var items = rubricItems(card);
    var index = rubricCurrent(card);
    if (index >= items.length) index = items.length - 1;
    var radio = items[index].querySelector('input[type=radio][value="' + value + '"]');
    if (radio) radio.checked = true;
    rubricHighlight(card, index + 1);
  }

  function rubricBack(card) {
    var index = Math.max(0, rubricCurrent(card) - 1);
    var items = rubricItems(card);
    if (!items.length) return;
    items[index].querySelectorAll("input[type=radio]").forEach(function (r) { r.checked = false; });
    rubricHighlight(card, index);
  }

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches(".criterion input[type=radio]")) {
      var card = document.getElementById("card");
      var item = event.target.closest(".criterion");
      rubricHighlight(card, rubricItems(card).indexOf(item) + 1);
    }
  });

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("select.rank-place")) rankRefresh(document.getElementById("card"));
  });

  // A card swapped in with places already given (a refused submit shows them again) says so.
  document.addEventListener("htmx:afterSwap", function () {
    var card = document.getElementById("card");
    if (card && card.querySelector("select.rank-place")) rankRefresh(card);
  });

  document.addEventListener("click", function (event) {
    var pick = event.target.closest && event.target.closest("[data-rank-pick]");
    if (pick) {
      event.preventDefault();
      rankPick(document.getElementById("card"), pick.getAttribute("data-rank-pick"));
      return;
    }
    if (event.target.closest && event.target.closest("[data-rubric-back]")) {
      event.preventDefault();
      rubricBack(document.getElementById("card"));
      return;
    }
    if (event.target.closest && event.target.closest("[data-rank-back]")) {
      event.preventDefault();
      rankBack(document.getElementById("card"));
      return;
    }
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
    var choosing = target && target.tagName === "INPUT" && (target.type === "radio" || target.type === "checkbox");
    var typing = target && ((target.tagName === "INPUT" && !choosing) || target.tagName === "TEXTAREA" || target.isContentEditable);
    if (event.key === "Escape") {
      if (typing) target.blur();
      toggleHelp(false);
      return;
    }
    if (typing) return;
    if (event.key === "Enter" && target && target.tagName === "BUTTON") return; // Enter on a focused button presses it
    if (target && (target.tagName === "SELECT" || choosing) && (event.key === "Backspace" || /^[0-9]$/.test(event.key))) target.blur();
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
    if (/^[1-5]$/.test(key) && card.querySelector(".rubric")) {
      event.preventDefault();
      rubricScore(card, key);
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
