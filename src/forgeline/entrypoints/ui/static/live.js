// Keeps the parts of a page marked [data-region] fresh while any of them is [data-live]:
// the page is fetched again and those parts swapped for their new versions. Everything
// swapped in is the server's escaped HTML, parsed inert (DOMParser runs no script).
"use strict";
(function () {
  const PERIOD_MS = 2000;
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (response.ok && !response.redirected) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const region of document.querySelectorAll("[data-region]")) {
          const next = region.id && fresh.getElementById(region.id);
          if (next) region.replaceWith(document.importNode(next, true));
        }
      }
    } catch (error) {
      // The server is restarting or the network dropped: try again at the next tick.
    }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if (document.querySelector("[data-live]")) timer = setTimeout(refresh, PERIOD_MS);
  }

  // build.js asks for a refresh when a build ends, so its summary shows the outcome now.
  document.addEventListener("forgeline:refresh", refresh);
  schedule();
})();
