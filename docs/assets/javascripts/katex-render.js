// Typeset the math that pymdownx.arithmatex (generic mode) leaves in the page:
// <span class="arithmatex">\(...\)</span> inline and <div class="arithmatex">\[...\]</div> blocks.
// KaTeX is loaded from the site itself (assets/katex), so the pages render offline.
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.dataset.katex === "done") return;
      var tex = el.textContent.trim();
      var display = el.tagName === "DIV";
      if (tex.startsWith("\\(") || tex.startsWith("\\[")) tex = tex.slice(2, -2);
      else if (tex.startsWith("$$")) tex = tex.slice(2, -2);
      else if (tex.startsWith("$")) tex = tex.slice(1, -1);
      katex.render(tex, el, { displayMode: display, throwOnError: false });
      el.dataset.katex = "done";
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { typeset(document.body); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document.body); });
  }
})();
