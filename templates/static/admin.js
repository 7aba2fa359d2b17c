// The dashboard's one script: keeps each send's live panel current without reloading the
// page. It polls the panel's data-live URL (JSON, with the session cookie), writes each
// value into the element whose data-field names it, and shows only the forms whose
// data-when lists the send's status. Everything works without it except the refresh.
"use strict";

(function () {
  const EVERY_MS = 1000;
  const FINISHED = ["done", "cancelled"];

  function show(panel, data) {
    panel.querySelectorAll("[data-field]").forEach(function (element) {
      const name = element.dataset.field;
      if (!(name in data)) {
        return;
      }
      if (element instanceof HTMLProgressElement) {
        element.max = Math.max(data.readers, 1);
        element.value = data[name];
      } else {
        element.textContent = String(data[name]);
      }
    });
    panel.querySelectorAll("[data-when]").forEach(function (form) {
      form.hidden = !form.dataset.when.split(" ").includes(data.status);
    });
    panel.dataset.status = data.status;
  }

  function poll(panel) {
    fetch(panel.dataset.live, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (response) {
        if (response.status === 401) {
          throw new Error("signed out");
        }
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (data !== null) {
          show(panel, data);
        }
        if (data === null || !FINISHED.includes(data.status)) {
          window.setTimeout(poll, EVERY_MS, panel);
        }
      })
      .catch(function (error) {
        // Signed out: stop. A network hiccup: try again a little later.
        if (error.message !== "signed out") {
          window.setTimeout(poll, EVERY_MS * 5, panel);
        }
      });
  }

  document.querySelectorAll("[data-live]").forEach(function (panel) {
    if (!FINISHED.includes(panel.dataset.status)) {
      window.setTimeout(poll, EVERY_MS, panel);
    }
  });
})();
