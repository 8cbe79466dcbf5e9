(function () {
  "use strict";
  var tbody = document.querySelector("#latents tbody");
  var rows = Array.prototype.slice.call(tbody.querySelectorAll("tr"));
  var message = document.getElementById("message");
  function find(attribute, value) {
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute(attribute) === value) return rows[i];
    }
    return null;
  }
  function jump(formId, inputId, attribute, what) {
    document.getElementById(formId).addEventListener("submit", function (event) {
      event.preventDefault();
      var value = String(parseInt(document.getElementById(inputId).value, 10));
      var row = find(attribute, value);
      if (row) {
        window.location.href = row.querySelector("a").getAttribute("href");
      } else {
        message.textContent = what + " " + value + " is not among the browsed latents";
      }
    });
  }
  jump("jump-latent", "latent-input", "data-latent", "latent");
  jump("jump-rank", "rank-input", "data-rank", "rank");
  var search = document.getElementById("search");
  function filter() {
    var query = search.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row) {
      var tokens = row.getAttribute("data-tokens").split("\u0001");
      var hit = !query || tokens.some(function (t) { return t.indexOf(query) !== -1; });
      row.hidden = !hit;
      if (hit) shown++;
    });
    message.textContent = query ? shown + " of " + rows.length + " latents have a token matching \u201c" + query + "\u201d" : "";
  }
  search.addEventListener("input", filter);
  document.querySelectorAll("#latents th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = "data-" + th.getAttribute("data-key");
      var dir = th.getAttribute("data-dir") === "asc" ? "desc" : "asc";
      document.querySelectorAll("#latents th[data-key]").forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", dir);
      rows.sort(function (a, b) {
        var d = parseFloat(a.getAttribute(key)) - parseFloat(b.getAttribute(key));
        return dir === "asc" ? d : -d;
      });
      rows.forEach(function (row) { tbody.appendChild(row); });
    });
  });
  var hash = decodeURIComponent(window.location.hash.slice(1));
  if (hash.indexOf("search=") === 0) { search.value = hash.slice(7); filter(); }
})();
