// The page's language, which Gradio's Settings -> Language chooses and this page
// remembers (web/ui.py puts it in the page's head, before static/ui.js).
//
// Gradio translates its own words and our labels (gr.I18n) in the page when the
// language is switched, but the texts the server writes (status lines, notes,
// captions, statistics) follow the browser's Accept-Language, and Gradio forgets
// the choice on reload. So a switch is kept in localStorage (for Gradio's locale,
// set back on load) and in a cookie (which the server reads before Accept-Language:
// web/ui_text.py `language_of`), and the page is loaded again, in one language
// throughout.
(() => {
  const KEY = "zimage.lang";
  const COOKIE = "zimage_lang";
  const zh = (locale) => (locale || "").toLowerCase().startsWith("zh");
  const same = (a, b) => (a || "").toLowerCase() === (b || "").toLowerCase();
  const stored = localStorage.getItem(KEY);
  const remember = (locale) => {
    localStorage.setItem(KEY, locale);
    document.cookie = `${COOKIE}=${encodeURIComponent(locale)}; path=/; max-age=31536000; samesite=lax`;
  };
  if (stored) remember(stored); // (the cookie again: it may have been cleared alone)
  // What our own scripts say things in (static/ui.js, static/edit.js).
  window.zimageLang = zh(stored || navigator.language) ? "zh" : "en";

  // Gradio's locale, through its own changeLocale: the module of the page's Gradio
  // (the very URL it loaded, so the same store), found among the loaded scripts.
  const setGradioLocale = async (locale) => {
    const core = performance
      .getEntriesByType("resource")
      .map((entry) => entry.name)
      .find((name) => /\/assets\/core-[\w-]+\.js$/.test(name));
    if (!core) throw new Error("Gradio's core module is not loaded");
    (await import(core)).changeLocale(locale);
  };

  // Gradio sets <html lang> to its locale: first its own choice (the browser's),
  // then, once the stored one is put back, every switch in Settings.
  // (Gradio puts this script in the page once it has started: it may have set it already.)
  let shown = null; // the locale the page settled in; null until then
  const watch = () => {
    const now = document.documentElement.getAttribute("lang");
    if (!now) return;
    if (shown === null) {
      if (stored && !same(now, stored)) {
        setGradioLocale(stored).catch(() => {
          shown = now; // Gradio's own then; switches are still remembered
        });
        return;
      }
      shown = now;
      return;
    }
    if (same(now, shown)) return;
    shown = now;
    remember(now);
    location.reload();
  };
  new MutationObserver(watch).observe(document.documentElement, { attributes: true, attributeFilter: ["lang"] });
  watch();
})();
