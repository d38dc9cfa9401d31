// Rewardloop: behaviour shared by every page. No inline script anywhere (CSP).
(function () {
  "use strict";
  function flash(text) {
    var box = document.getElementById("flash");
    if (!box) return;
    var p = document.createElement("p");
    p.className = "flash error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    box.replaceChildren(p);
  }
  // htmx does not swap 4xx/5xx answers; say what happened instead of failing silently.
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status === 403 && xhr.responseText.indexOf("csrf-expired") !== -1) {
      flash("Your session's security token has expired. Reload the page and try again; nothing you saved was lost.");
    } else if (xhr.status === 403) {
      flash("You are not allowed to do that (403).");
    } else {
      flash("The server answered " + xhr.status + ". Reload the page and try again.");
    }
  });
  document.addEventListener("htmx:sendError", function () {
    flash("The server could not be reached. Check your connection; your last action may not have been saved.");
  });
})();
