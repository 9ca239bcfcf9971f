// The image tab (web/ui_edit.py): a chosen image drawn on a canvas, a mask painted
// over it, and the form posted to /api/edit with fetch; the file never goes through
// Gradio's uploads (which write it to disk). The edited image comes back inline.
(() => {
  const TEXT = __EDIT_TEXT__;
  const ROUTE = __EDIT_PATH__;
  const lang = window.zimageLang || "en"; // (static/lang.js)
  const say = (key, values = {}) => TEXT[lang][key].replace(/\{(\w+)\}/g, (_, name) => values[name]);
  const $ = (id) => document.getElementById(id);
  const PAINT = "rgba(255, 64, 64, 0.55)"; // how the mask shows; any painted pixel is masked
  let picture = null; // the chosen file, as the server gets it
  let painted = false;
  let drawing = null; // the last point of the stroke being drawn

  // The tab's words in the page's language (the HTML is built in English).
  function localize(panel) {
    if (panel.dataset.lang === lang) return;
    panel.dataset.lang = lang;
    for (const el of panel.querySelectorAll("[data-say]")) el.textContent = say(el.dataset.say);
    $("edit-result")?.setAttribute("alt", say("result"));
  }
  new MutationObserver(() => {
    const panel = $("edit-panel");
    if (panel) localize(panel);
  }).observe(document.documentElement, { childList: true, subtree: true });

  async function choose(file) {
    const stage = $("edit-stage");
    picture = null;
    stage.hidden = true;
    if (!file) return;
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      $("edit-status").textContent = say("failed", { reason: file.name });
      return;
    }
    for (const id of ["edit-picture", "edit-mask"]) {
      const canvas = $(id);
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    $("edit-picture").getContext("2d").drawImage(bitmap, 0, 0);
    clearMask();
    picture = file;
    stage.hidden = false;
    $("edit-status").textContent = "";
  }

  function clearMask() {
    const mask = $("edit-mask");
    mask?.getContext("2d").clearRect(0, 0, mask.width, mask.height);
    painted = false;
  }

  // A pointer's place in the image's own pixels (the canvas is shown scaled).
  function at(event) {
    const mask = $("edit-mask");
    const box = mask.getBoundingClientRect();
    return [((event.clientX - box.left) * mask.width) / box.width, ((event.clientY - box.top) * mask.height) / box.height];
  }
  function stroke(to) {
    const context = $("edit-mask").getContext("2d");
    context.strokeStyle = PAINT;
    context.fillStyle = PAINT;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.lineWidth = Number($("edit-brush").value);
    const from = drawing || to;
    context.beginPath();
    context.moveTo(from[0], from[1]);
    context.lineTo(to[0], to[1]);
    context.stroke();
    drawing = to;
    painted = true;
  }
  document.addEventListener("pointerdown", (event) => {
    if (event.target.id !== "edit-mask" || !picture) return;
    event.preventDefault();
    event.target.setPointerCapture(event.pointerId);
    drawing = null;
    stroke(at(event));
  });
  document.addEventListener("pointermove", (event) => {
    if (event.target.id === "edit-mask" && drawing) stroke(at(event));
  });
  for (const end of ["pointerup", "pointercancel"]) document.addEventListener(end, () => (drawing = null));

  // The mask as the server reads it: white where painted (repainted), black elsewhere.
  function maskPng() {
    const mask = $("edit-mask");
    const out = document.createElement("canvas");
    out.width = mask.width;
    out.height = mask.height;
    const drawn = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
    const pixels = drawn.data;
    for (let i = 0; i < pixels.length; i += 4) {
      const on = pixels[i + 3] > 0 ? 255 : 0;
      pixels[i] = pixels[i + 1] = pixels[i + 2] = on;
      pixels[i + 3] = 255;
    }
    out.getContext("2d").putImageData(drawn, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  function reason(answer) {
    const detail = answer?.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail) && detail.length) return `${detail[0].loc?.at(-1)}: ${detail[0].msg}`;
    return "";
  }

  // Whether the image goes as a control image (the box is disabled without --controlnet).
  function controlled() {
    const box = $("edit-control");
    return Boolean(box?.checked && !box.matches(":disabled"));
  }

  async function run() {
    const status = $("edit-status");
    const prompt = $("edit-prompt").value.trim();
    if (!picture) return (status.textContent = say("no_image"));
    if (!prompt) return (status.textContent = say("no_prompt"));
    const form = new FormData();
    if (controlled()) {
      // ControlNet: the image is the map the new image follows; no mask, no strength.
      form.append("control_image", picture, picture.name || "image");
      form.append("control_kind", $("edit-control-kind").value);
      form.append("control_scale", $("edit-control-scale").value);
    } else {
      form.append("image", picture, picture.name || "image");
      if (painted) form.append("mask", await maskPng(), "mask.png");
      form.append("strength", $("edit-strength").value);
    }
    form.append("prompt", prompt);
    const lora = $("edit-lora").value;
    if (lora) form.append("loras", JSON.stringify([{ name: lora, scale: Number($("edit-lora-scale").value) }]));
    form.append("seed", $("edit-seed").value || "0");
    form.append("format", "png");
    form.append("response_format", "b64_json");
    const button = $("edit-run");
    button.disabled = true;
    status.textContent = say("working");
    try {
      // Same origin: the UI's login cookie goes with it (web/auth.py ui_or_caller_namespace).
      const response = await fetch(ROUTE, { method: "POST", body: form, credentials: "same-origin" });
      const answer = await response.json().catch(() => null);
      if (!response.ok) {
        status.textContent = say("failed", { reason: reason(answer) || `HTTP ${response.status}` });
        return;
      }
      const image = answer.images[0];
      const result = $("edit-result");
      result.src = `data:image/png;base64,${image.b64_json}`;
      result.hidden = false;
      status.textContent = say("done", {
        kind: answer.kind,
        cache: image.cache,
        seed: image.seed,
        seconds: image.duration.toFixed(2),
      });
    } catch (error) {
      status.textContent = say("failed", { reason: String(error) });
    } finally {
      button.disabled = false;
      window.zimageEdit.runs += 1;
    }
  }

  document.addEventListener("change", (event) => {
    if (event.target.id === "edit-file") choose(event.target.files?.[0]);
    if (event.target.id === "edit-control") $("edit-strength").disabled = controlled();
  });
  document.addEventListener("input", (event) => {
    if (event.target.id === "edit-strength") $("edit-strength-value").textContent = event.target.value;
    if (event.target.id === "edit-control-scale") $("edit-control-scale-value").textContent = event.target.value;
    if (event.target.id === "edit-lora-scale") $("edit-lora-scale-value").textContent = event.target.value;
  });
  document.addEventListener("click", (event) => {
    if (event.target.closest?.("#edit-clear")) clearMask();
    if (event.target.closest?.("#edit-run")) run();
  });

  window.zimageEdit = { runs: 0 }; // edits finished, shown or failed (what a test waits for)
})();
