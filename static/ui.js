// The page's own behaviour, beside Gradio's (web/ui.py puts it in the page's head):
// Ctrl+Enter (Cmd+Enter) generates from anywhere on the page, and the keyboard stays
// where it was (a result arriving never takes it); the prompt's character
// counter; a note when a slider's number box was out of range; Interrupt shown (and
// Esc pressing it) while a generation runs; new results scrolled into view where they are below the fold.
(() => {
  const TEXT = __TEXT__;
  const LIMIT = __LIMIT__;
  const ZIP_ROUTE = __ZIP_ROUTE__;
  const OWN_WORDS = ["download_all", "tab_generate", "tab_edit", "tab_stats"];
  const lang = window.zimageLang || "en"; // (static/lang.js)
  const say = (key, values) => TEXT[lang][key].replace(/\{(\w+)\}/g, (_, name) => values[name]);
  const $ = (selector) => document.querySelector(selector);
  let showCancel = null;

  // Esc while a generation runs: Interrupt (web/ui_run.py).
  let running = false;
  document.addEventListener(
    "keydown",
    (event) => {
      if (event.key === "Escape" && running && !event.isComposing) $("#cancel")?.click();
    },
    true,
  );

  document.addEventListener(
    "keydown",
    (event) => {
      if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
      const button = $("#generate");
      if (!button || button.disabled) return;
      event.preventDefault();
      event.stopPropagation();
      if (tooLongToSend()) return;
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

  // The keyboard stays where it was. Gradio moves focus on its own: its gallery
  // focuses the selected thumbnail whenever the selection changes (as when a result
  // arrives), and a field it blurs or redraws leaves the focus on the page's body. The
  // keys typed into the prompt meanwhile would be lost. So the element focus last went
  // to outside the images (or inside them by the person's own move: a pointer, Tab, or
  // a key that is not typing into a text field) is the keyboard's home: focus taken
  // into the images or dropped on the body without such a move is put back there, on
  // the field's new element if it was redrawn, with the caret where it was.
  const IMAGES = "#result, #history";
  let movedAt = 0;
  let home = null; // {el, where: a selector that finds it again once redrawn}
  const moved = () => (movedAt = performance.now());
  const deliberate = () => performance.now() - movedAt < 1000;
  const typingIn = (el) =>
    el instanceof HTMLTextAreaElement || (el instanceof HTMLInputElement && el.type !== "checkbox" && el.type !== "radio");
  const whereIs = (el) => {
    if (el.id) return `#${CSS.escape(el.id)}`;
    const owner = el.parentElement?.closest("[id]");
    return owner ? `#${CSS.escape(owner.id)} ${el.tagName.toLowerCase()}` : null;
  };
  document.addEventListener("pointerdown", moved, true);
  document.addEventListener(
    "keydown",
    (event) => {
      if (event.key === "Tab" || !typingIn(event.target)) moved();
    },
    true,
  );
  function goHome() {
    if (!home) return false;
    const old = home.el;
    const el = old.isConnected ? old : home.where && document.querySelector(home.where);
    if (!el || el.disabled) return false;
    el.focus({ preventScroll: true });
    if (el !== old && typingIn(el)) {
      const same = old.value === el.value;
      const [start, end] = same ? [old.selectionStart, old.selectionEnd] : [el.value.length, el.value.length];
      try {
        el.setSelectionRange(start, end);
      } catch {} // (a number box has no caret to place)
    }
    home = { el, where: home.where };
    return document.activeElement === el;
  }
  document.addEventListener(
    "focusin",
    (event) => {
      const into = event.target;
      if (deliberate() || !into.closest?.(IMAGES)) {
        home = { el: into, where: whereIs(into) };
      } else if (into !== home?.el && !goHome()) {
        into.blur();
      }
    },
    true,
  );
  document.addEventListener(
    "focusout",
    (event) => {
      if (event.relatedTarget || deliberate() || event.target !== home?.el) return;
      // Focus is going nowhere (the field is being redrawn, or blurred by a script):
      // once it has settled, bring it back unless something took it meanwhile.
      setTimeout(() => {
        const now = document.activeElement;
        if ((!now || now === document.body) && document.hasFocus() && !deliberate()) goHome();
      }, 0);
    },
    true,
  );
  // Chromium may drop a focused field that Gradio redraws without a focusout: each
  // change of the page (the observer below) checks whether the keyboard's home was
  // the active element just before and is gone now.
  let had = null; // what had the keyboard when the page last changed
  function keepHome() {
    const now = document.activeElement;
    if (home && had === home.el && !home.el.isConnected && (!now || now === document.body) && !deliberate()) {
      goHome();
    }
    had = document.activeElement;
  }

  // A prompt or negative prompt over the limit is not sent (a pasted 64 KB would be
  // refused whole by the server's body limit, and the page would show Gradio's English
  // error): the note beside it says so, in the page's language (web/ui.py's #too-long
  // event), and the images stay. A negative prompt's note is inside Advanced: opened.
  const promptText = () => $("#prompt textarea")?.value || "";
  const negativeText = () => $("#negative textarea")?.value || "";
  const over = (text) => [...text].length > LIMIT;
  function tooLongToSend() {
    if (!over(promptText()) && !over(negativeText())) return false;
    const advanced = $("#advanced .label-wrap");
    if (over(negativeText()) && advanced && !advanced.classList.contains("open")) advanced.click();
    $("#too-long")?.click();
    return true;
  }
  function tooLong() {
    const note = (key, text) =>
      over(text)
        ? {
            __type__: "update",
            value: say(key, { length: [...text].length, limit: LIMIT }),
            elem_classes: ["field-note", "field-error"], // (web/ui_form.py's field_note)
          }
        : { __type__: "update", value: "", elem_classes: ["field-note"] }; // (not the cause)
    return [note("prompt_too_long", promptText()), note("negative_too_long", negativeText())];
  }
  document.addEventListener(
    "click",
    (event) => {
      if (event.target.closest?.("#generate") && tooLongToSend()) {
        event.preventDefault();
        event.stopImmediatePropagation();
      }
    },
    true,
  );
  document.addEventListener(
    "keydown",
    (event) => {
      // Enter in the prompt without Ctrl submits it (Gradio's submit): not when too long.
      if (event.key === "Enter" && !event.ctrlKey && !event.metaKey && event.target.closest?.("#prompt")) {
        if (event.shiftKey && tooLongToSend()) {
          event.preventDefault();
          event.stopImmediatePropagation();
        }
      }
    },
    true,
  );

  // PNG Info: the parameters text of a chosen or dropped PNG, read here (the file is
  // not uploaded), handed to the server by the #png-read event (web/ui_png_info.py).
  async function pngParameters(file) {
    const data = new Uint8Array(await file.arrayBuffer());
    const view = new DataView(data.buffer);
    const signature = [137, 80, 78, 71, 13, 10, 26, 10];
    if (!signature.every((byte, i) => data[i] === byte)) return "";
    const latin1 = new TextDecoder("latin1");
    const inflate = async (bytes) =>
      new Uint8Array(await new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"))).arrayBuffer());
    for (let at = 8; at + 12 <= data.length; ) {
      const length = view.getUint32(at);
      const type = latin1.decode(data.subarray(at + 4, at + 8));
      const body = data.subarray(at + 8, at + 8 + length);
      const nul = body.indexOf(0);
      if (nul > 0 && latin1.decode(body.subarray(0, nul)) === "parameters") {
        if (type === "tEXt") return latin1.decode(body.subarray(nul + 1));
        if (type === "zTXt") return latin1.decode(await inflate(body.subarray(nul + 2)));
        if (type === "iTXt") {
          // keyword \0 flag method language \0 translated keyword \0 text (UTF-8)
          let text = body.indexOf(0, nul + 3) + 1;
          text = body.indexOf(0, text) + 1;
          const raw = body.subarray(text);
          return new TextDecoder("utf-8").decode(body[nul + 1] ? await inflate(raw) : raw);
        }
      }
      if (type === "IEND") break;
      at += 12 + length;
    }
    return "";
  }
  async function readPng(file) {
    window.zimage.pngText = file ? (await pngParameters(file).catch(() => "")).slice(0, 16384) : "";
    $("#png-read")?.click();
  }
  document.addEventListener(
    "change",
    (event) => {
      const input = event.target;
      if (!(input instanceof HTMLInputElement) || input.id !== "png-info-file") return;
      readPng(input.files?.[0]).finally(() => (input.value = ""));
    },
    true,
  );
  document.addEventListener("dragover", (event) => {
    if (event.target.closest?.("#png-info")) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    if (!event.target.closest?.("#png-info")) return;
    event.preventDefault();
    readPng(event.dataTransfer?.files?.[0]);
  });

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
    running = true;
    // Shown only if the answer takes a moment: a cache hit comes back before it appears.
    clearTimeout(showCancel);
    showCancel = setTimeout(() => $("#actions")?.classList.add("zimage-running"), 300);
    // On a phone the images sit below the form: show the progress there at once.
    const result = $("#result");
    if (result && window.innerWidth < 768) result.scrollIntoView({ block: "start", behavior: "instant" });
  }

  function finished() {
    running = false;
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

  // What Gradio does not say to screen readers: the status line, the queue line, the
  // notice and each field's note are live regions (always on the page, web/ui_layout.py);
  // a field names its note (aria-describedby), and is aria-invalid while the note is an
  // error. An empty gallery's placeholder carries an aria-label its <div> may not have.
  const NOTES = {
    "prompt-note": "#prompt textarea",
    "negative-prompt-note": "#negative textarea",
    "width-note": "#width input",
    "height-note": "#height input",
    "seed-note": "#seed input",
    "steps-note": "#steps input",
    "guidance-scale-note": "#guidance input",
    "batch-size-note": "#batch input",
  };
  const set = (el, name, value) => {
    if (value === null) el.removeAttribute(name);
    else if (el.getAttribute(name) !== value) el.setAttribute(name, value);
  };
  function describe() {
    // The counter drawn by Gradio is a block 40 px high; drawn by `count`, one line.
    const counter = $("#prompt-count");
    if (counter && !counter.dataset.counted) {
      counter.dataset.counted = "1";
      count(promptText());
    }
    for (const region of document.querySelectorAll("#status, #queue-note, #notice, .field-note")) {
      set(region, "role", "status");
      set(region, "aria-live", "polite");
      set(region, "aria-atomic", "true");
    }
    for (const [id, selector] of Object.entries(NOTES)) {
      const note = document.getElementById(id);
      if (!note) continue;
      const error = note.classList.contains("field-error") && note.innerText.trim() !== "";
      for (const field of document.querySelectorAll(selector)) {
        set(field, "aria-describedby", id);
        set(field, "aria-invalid", error ? "true" : null);
      }
    }
    // A thumbnail's name is its caption (Gradio's "Thumbnail 1 of 3" does not say what
    // the visible caption says).
    for (const thumb of document.querySelectorAll(".thumbnail-item")) {
      const caption = thumb.querySelector(".caption-label")?.textContent.trim();
      if (caption) set(thumb, "aria-label", caption);
    }
    // Words Gradio leaves in English: Download all (a toolbar button's label is no
    // gr.I18n), and the tabs not shown when the locale was set back (static/lang.js).
    if (lang !== "en") {
      for (const button of document.querySelectorAll("#result button, .tab-container button")) {
        const key = OWN_WORDS.find((k) => button.textContent.trim() === TEXT.en[k]);
        if (key) button.textContent = say(key, {});
      }
    }
    const png = $("#png-info-file");
    if (png) set(png, "aria-label", say("png_file", {}));
    for (const empty of document.querySelectorAll(".empty[aria-label]")) {
      if (!empty.getAttribute("role")) empty.removeAttribute("aria-label");
    }
  }
  // At once (a microtask after each change), so that nothing reads the page between.
  new MutationObserver(() => {
    keepHome();
    describe();
  }).observe(document.documentElement, {
    childList: true,
    subtree: true,
    characterData: true,
    attributes: true,
    attributeFilter: ["class"],
  });

  const ask = (key) => window.confirm(say(key, {}));

  // Download all: the results' images as one zip (web/ui_zip.py), by their gallery
  // paths (what the file route's URL of each thumbnail names), in the gallery's order.
  const downloadAll = () => {
    const paths = [];
    for (const img of document.querySelectorAll("#result .thumbnail-small img, #result .thumbnail-item img")) {
      const url = new URL(img.src, location.href);
      const at = url.pathname.indexOf("/file=");
      const path = at < 0 ? null : decodeURIComponent(url.pathname.slice(at + "/file=".length));
      if (path && !paths.includes(path)) paths.push(path);
    }
    if (!paths.length) return;
    const link = document.createElement("a");
    link.href = `${ZIP_ROUTE}?${new URLSearchParams(paths.map((p) => ["f", p]))}`;
    link.download = "";
    link.click();
  };

  window.zimage = { count, started, finished, ask, tooLong, downloadAll, runs: 0, pngText: "" };
})();
