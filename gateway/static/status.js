// Refreshes each system's pull queue in place; reloads the page when its list of images changed.
"use strict";
(function () {
  const period = Number(document.currentScript.dataset.refreshMs) || 2000;

  async function refresh(box) {
    const response = await fetch(box.dataset.refresh, {cache: "no-store"});
    if (!response.ok) {
      box.classList.add("stale");
      return;
    }
    const before = box.querySelector(".queue").dataset.stamp;
    box.innerHTML = await response.text();
    box.classList.remove("stale");
    if (box.querySelector(".queue").dataset.stamp !== before) {
      window.location.reload();
    }
  }

  function tick() {
    const boxes = document.querySelectorAll("[data-refresh]");
    Promise.allSettled(Array.from(boxes, refresh)).then(() => setTimeout(tick, period));
  }

  setTimeout(tick, period);
})();
