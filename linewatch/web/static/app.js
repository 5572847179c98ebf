// linewatch operator page: keyboard shortcuts for the review queue. Everything else is htmx attributes
// in the templates; the page works without this file (buttons are plain forms).
(function () {
  "use strict";

  function items() {
    return Array.from(document.querySelectorAll(".review-item"));
  }

  function current() {
    const active = document.activeElement;
    return active && active.closest ? active.closest(".review-item") : null;
  }

  function select(item) {
    if (!item) return;
    item.focus();
    item.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    const list = items();
    if (!list.length) return;
    const at = list.indexOf(current());
    select(list[at < 0 ? 0 : Math.min(list.length - 1, Math.max(0, at + step))]);
  }

  function press(label) {
    const item = current() || items().find((candidate) => !candidate.dataset.label);
    const button = item && item.querySelector('button[name="label"][value="' + label + '"]');
    if (button) button.click();
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || !document.querySelector(".queue")) return;
    const tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") return;
    const actions = { j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      n: () => press("normal"), d: () => press("defect") };
    const action = actions[event.key];
    if (!action) return;
    event.preventDefault();
    action();
  });

  // A judged item is replaced by the server's answer: carry on with the next one nobody has judged. A refused
  // label (expired page, unknown id) keeps the focus where it is: the message says why, nothing is skipped.
  let judged = null;
  document.addEventListener("htmx:beforeRequest", function (event) {
    const item = event.target.closest && event.target.closest(".review-item");
    judged = item ? item.id : null;
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (judged && !event.detail.successful) judged = null;
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!judged) return;
    const list = items();
    const at = list.findIndex((item) => item.id === judged);
    judged = null;
    select(list.slice(at + 1).find((item) => !item.dataset.label) || list[at]);
  });

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector(".queue")) select(items()[0]);
  });
})();
