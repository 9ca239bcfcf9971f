// The page's own behaviour, beside Gradio's (web/ui.py puts it in the page's head):
// Ctrl+Enter (Cmd+Enter) generates from anywhere on the page, and the keyboard stays
// where it was (a result arriving never takes it); the prompt's character
// counter; a note when a slider's number box was out of range; Cancel shown while a
// generation runs; new results scrolled into view where they are below the fold.
(() => {
  const TEXT = __TEXT__;
  const LIMIT = __LIMIT__;
  const lang = (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  const say = (key, values) => TEXT[lang][key].replace(/\{(\w+)\}/g, (_, name) => values[name]);
  const $ = (selector) => document.querySelector(selector);
  let showCancel = null;

  document.addEventListener(
    "keydown",
    (event) => {
      if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
      const button = $("#generate");
      if (!button || button.disabled) return;
      event.preventDefault();
      event.stopPropagation();
      // A number box takes (and clamps) its value on blur: blur it, and focus it again
      // at once, so that the keys typed next still land there. The prompt keeps focus.
      const field = document.activeElement;
      if (field instanceof HTMLInputElement) {
        field.blur();
        field.focus({ preventScroll: true });
      }
      setTimeout(() => button.click(), 50);
    },
    true,
  );

  // Gradio's gallery focuses its selected thumbnail whenever the selection changes, as
  // it does when a result arrives: the keys typed into the prompt meanwhile would be
  // lost. Focus goes into the images only when the person moves it there (a pointer,
  // Tab, or a key pressed inside them); otherwise it goes back where it was.
  const IMAGES = "#result, #history";
  let movedAt = 0;
  const moved = () => (movedAt = performance.now());
  document.addEventListener("pointerdown", moved, true);
  document.addEventListener(
    "keydown",
    (event) => {
      if (event.key === "Tab" || event.target.closest?.(IMAGES)) moved();
    },
    true,
  );
  document.addEventListener(
    "focusin",
    (event) => {
      const into = event.target;
      const from = event.relatedTarget;
      if (!into.closest?.(IMAGES) || performance.now() - movedAt < 1000) return;
      if (from instanceof HTMLElement && from.isConnected && !from.closest(IMAGES)) {
        from.focus({ preventScroll: true });
      } else {
        into.blur();
      }
    },
    true,
  );

  function count(text) {
    const counter = $("#prompt-count");
    if (!counter) return;
    const n = [...(text || "")].length; // characters (code points), as the server counts
    const over = n > LIMIT;
    counter.textContent = `${n} / ${LIMIT}` + (over ? ` · ${say("too_long", { limit: LIMIT })}` : "");
    counter.classList.toggle("over", over);
  }

  document.addEventListener(
    "input",
    (event) => {
      if (event.target.closest && event.target.closest("#prompt")) count(event.target.value);
    },
    true,
  );

  // "blur" while it comes down to the box (capture), before Gradio's own blur handler
  // puts the value back in range.
  document.addEventListener(
    "blur",
    (event) => {
      const box = event.target;
      if (!(box instanceof HTMLInputElement) || box.type !== "number") return;
      const slider = box.closest(".range-checked");
      if (!slider) return;
      let note = slider.querySelector(".range-note");
      if (!note) {
        note = document.createElement("div");
        note.className = "range-note";
        slider.appendChild(note);
      }
      const value = Number(box.value);
      const min = Number(box.min);
      const max = Number(box.max);
      const out = box.value !== "" && (value < min || value > max);
      note.textContent = out
        ? say("range", { min, max, value: Math.min(max, Math.max(min, value)) })
        : "";
    },
    true,
  );

  function started() {
    // Shown only if the answer takes a moment: a cache hit comes back before it appears.
    clearTimeout(showCancel);
    showCancel = setTimeout(() => $("#actions")?.classList.add("zimage-running"), 300);
  }

  function finished() {
    window.zimage.runs += 1; // generations this page has finished (what waits for one reads it)
    clearTimeout(showCancel);
    $("#actions")?.classList.remove("zimage-running");
    const result = $("#result");
    if (!result) return;
    const box = result.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) {
      result.scrollIntoView({ block: "start", behavior: "instant" });
    }
  }

  window.zimage = { count, started, finished, runs: 0 };
})();
