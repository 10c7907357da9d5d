// In-page helpers of mmrl.web_explorer, installed once per page as `window.__mmrl`.
// Every rectangle is in CSS pixels of the viewport (= screenshot pixels at DPR 1), clipped to it,
// as [x1, y1, x2, y2] with x1, y1 floored and x2, y2 ceiled.
(() => {
  const W = () => window.innerWidth;
  const H = () => window.innerHeight;
  const INTERACTIVE = "a[href], button, input:not([type=hidden]), textarea, summary, label[for], " +
    "[role=button], [role=link], [role=tab], [role=switch], [role=checkbox], [role=radio], [role=menuitem], " +
    "[role=option], [onclick], [contenteditable=''], [contenteditable=true], [tabindex]:not([tabindex='-1'])";
  const TEXT_TYPES = new Set(["text", "email", "search", "url", "tel", "number", "password", ""]);

  function clipRect(r) {
    const x1 = Math.max(0, Math.floor(r.left)), y1 = Math.max(0, Math.floor(r.top));
    const x2 = Math.min(W(), Math.ceil(r.right)), y2 = Math.min(H(), Math.ceil(r.bottom));
    return [x1, y1, x2, y2];
  }
  // A stable CSS path: tag names with :nth-of-type from the nearest ancestor that has an id.
  function selector(el) {
    const parts = [];
    for (let e = el; e && e.nodeType === 1 && e !== document.documentElement; e = e.parentElement) {
      if (e.id && /^[A-Za-z][\w-]*$/.test(e.id)) { parts.unshift("#" + e.id); break; }
      const same = Array.from(e.parentElement ? e.parentElement.children : []).filter((s) => s.tagName === e.tagName);
      const tag = e.tagName.toLowerCase();
      parts.unshift(same.length > 1 ? `${tag}:nth-of-type(${same.indexOf(e) + 1})` : tag);
    }
    return parts.join(" > ");
  }
  function accessibleName(el) {
    const label = el.getAttribute("aria-label") || (el.labels && el.labels[0] && el.labels[0].innerText) ||
      el.getAttribute("title") || el.getAttribute("placeholder") || el.innerText || el.value || "";
    return String(label).replace(/\s+/g, " ").trim().slice(0, 80);
  }
  function visible(el, r) {
    const s = getComputedStyle(el);
    return r.width >= 6 && r.height >= 6 && s.visibility !== "hidden" && s.display !== "none" &&
      Number(s.opacity) > 0 && s.pointerEvents !== "none" && r.right > 0 && r.bottom > 0 && r.left < W() && r.top < H();
  }
  function isTextInput(el) {
    if (el.tagName === "TEXTAREA") return !el.disabled && !el.readOnly;
    if (el.tagName === "INPUT") return TEXT_TYPES.has((el.getAttribute("type") || "").toLowerCase()) && !el.disabled && !el.readOnly;
    return el.isContentEditable;
  }
  // The element under (x, y) is `el` itself or inside it.
  function hits(el, x, y) {
    const top = document.elementFromPoint(x, y);
    return !!top && (top === el || el.contains(top));
  }
  function describe(el) {
    const r = el.getBoundingClientRect();
    return {
      bbox: clipRect(r), tag: el.tagName.toLowerCase(), role: el.getAttribute("role") || "",
      name: accessibleName(el), href: el.getAttribute("href") || "", type: (el.getAttribute("type") || "").toLowerCase(),
      selector: selector(el), text_input: isTextInput(el), target: el.getAttribute("target") || "",
    };
  }
  function candidates() {
    const out = [];
    const seen = new Set();
    for (const el of document.querySelectorAll(INTERACTIVE)) {
      if (el.tagName === "SELECT" || el.disabled) continue;  // native pop-ups are not in screenshots
      const r = el.getBoundingClientRect();
      if (!visible(el, r)) continue;
      const [x1, y1, x2, y2] = clipRect(r);
      if (x2 - x1 < 6 || y2 - y1 < 6) continue;
      if (!hits(el, (x1 + x2) / 2, (y1 + y2) / 2)) continue;
      const d = describe(el);
      if (seen.has(d.selector)) continue;
      seen.add(d.selector);
      out.push(d);
    }
    return out;
  }
  // Where a click at (x, y) lands: whether it hits the candidate, and the innermost element there.
  function hitTest(sel, x, y) {
    const el = document.querySelector(sel);
    const top = document.elementFromPoint(x, y);
    if (!el || !top) return { ok: false };
    return { ok: el === top || el.contains(top), bbox: clipRect(top.getBoundingClientRect()), tag: top.tagName.toLowerCase() };
  }
  // How far the page and each visible scrollable container can still move, in each direction.
  function scrollables() {
    const se = document.scrollingElement || document.documentElement;
    const page = {
      selector: "", bbox: [0, 0, W(), H()], down: se.scrollHeight - H() - se.scrollTop, up: se.scrollTop,
      right: se.scrollWidth - W() - se.scrollLeft, left: se.scrollLeft,
    };
    const out = [page];
    for (const el of document.querySelectorAll("body *")) {
      const s = getComputedStyle(el);
      const sy = /(auto|scroll)/.test(s.overflowY) && el.scrollHeight > el.clientHeight + 1;
      const sx = /(auto|scroll)/.test(s.overflowX) && el.scrollWidth > el.clientWidth + 1;
      if (!sy && !sx) continue;
      const r = el.getBoundingClientRect();
      if (!visible(el, r)) continue;
      const [x1, y1, x2, y2] = clipRect(r);
      if (x2 - x1 < 40 || y2 - y1 < 40 || !hits(el, (x1 + x2) / 2, (y1 + y2) / 2)) continue;
      out.push({
        selector: selector(el), bbox: [x1, y1, x2, y2],
        down: sy ? el.scrollHeight - el.clientHeight - el.scrollTop : 0, up: sy ? el.scrollTop : 0,
        right: sx ? el.scrollWidth - el.clientWidth - el.scrollLeft : 0, left: sx ? el.scrollLeft : 0,
      });
    }
    return out;
  }
  // A page with no text, no image and no control is blank (an error page or a broken render).
  function blank() {
    if (!document.body) return true;
    if (document.body.innerText.trim()) return false;
    return !document.querySelector("img, svg, canvas, video, input, button, textarea, iframe");
  }
  window.__mmrl = { candidates, hitTest, scrollables, blank };
})();
