(function () {
  "use strict";
  var form = document.getElementById("jump-latent");
  var message = document.getElementById("message");
  var browsed = JSON.parse(document.getElementById("browsed").textContent);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var value = parseInt(document.getElementById("latent-input").value, 10);
    if (browsed.indexOf(value) !== -1) {
      window.location.href = value + ".html";
    } else {
      message.textContent = "latent " + value + " is not among the browsed latents";
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "INPUT") return;
    var link = document.querySelector(event.key === "ArrowLeft" ? "a[rel=prev]" : event.key === "ArrowRight" ? "a[rel=next]" : null);
    if (link) window.location.href = link.getAttribute("href");
  });
})();
