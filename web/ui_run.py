"""The page's generation: its Generate, its Cancel, and the line that says its place
in the queue (the same generation for gradio_client is web/ui_api.py).

The page's handler never raises. A problem is said beside its field (the form
checks come first, web/ui_form.py) or in the notice under Generate, and the
images, status line and history stay as they were. While the job waits, a line
under Generate says its place in the queue (a timer of the page asks for it while
the generation runs); Interrupt (or Esc) takes a job that has not started out of
the queue, and stops one that runs after its denoising step under way ("Interrupted
at step 3/8"; nothing is stored) — unless another caller waits for the same image:
then this page only stops waiting, and the image is made (and stored) for them. A
full queue is no error: the page tries again, with back-off, and that line says so.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from pydantic import ValidationError

from pipeline.engine import Engine
from pipeline.errors import JobCancelled, JobInterrupted, QueueFull
from pipeline.limits import MAX_UI_BATCH
from pipeline.queue_ticket import QueueTicket
from pipeline.request import GenerationRequest
from pipeline.results import GenerationResult
from pipeline.service import GenerationService
from web.errors import EXPECTED
from web.ui_form import NOTED, check_form, explain, field_note, size_limits, size_preset
from web.ui_history import entries_for, gallery, merge, persistable, status_line
from web.ui_history_panel import listing
from web.ui_images import UiImages, namespace_of
from web.ui_layout import CreateTab
from web.ui_text import language_of, say

# A full queue: try again after 1 s, then 2, 4, 8, 10, 10 ... for at most 5 minutes.
BUSY_FIRST_WAIT_S, BUSY_MAX_WAIT_S, BUSY_GIVE_UP_S = 1.0, 10.0, 300.0
QUEUE_WATCH_S = 0.5  # how often the page asks for its place in the queue
WATCH_GRACE_S = 3.0  # the page's timer may ask before its generation has begun


class StillBusy(Exception):
    """The queue stayed full for BUSY_GIVE_UP_S."""


@dataclass
class _Waiting:
    """A page's generation in progress: the job it started, whether Cancel was pressed,
    and while the queue is full, how many wait and when it tries again."""

    ticket: QueueTicket = field(default_factory=QueueTicket)
    stop: bool = False
    busy: tuple[int, float] | None = None  # (generations waiting, monotonic time of the retry)
    task: asyncio.Task[list[GenerationResult]] | None = None  # the wait, which Interrupt may end
    detached: bool = False  # Interrupt ended the wait: the shared generation goes on
    chosen: bool = False  # a near-repeat was used instead (web/ui_similar.py): end silently


def result_outputs(tab: CreateTab) -> list[Any]:
    """The components a shown result updates (`shown_result`), in its order: the first
    outputs of every handler that shows one."""
    return [
        tab.gallery,
        tab.status,
        tab.notice,
        tab.history,
        tab.stored_history,
        tab.past,
        tab.listed,
        tab.picked,
        tab.history_delete,
        tab.history_search,
        tab.use_settings,
        tab.shown,
        tab.selected,
        tab.parameters,
        tab.last_seed,
        tab.reuse,
    ]


class UiRun:
    """The page's generation over `service`, updating the components of `tab` (see the
    module docstring)."""

    def __init__(self, service: GenerationService, engine: Engine, images: UiImages, tab: CreateTab) -> None:
        self.service = service
        self.engine = engine
        self.images = images
        self.tab = tab
        self._waiting: dict[str, _Waiting] = {}  # per page (Gradio session)
        self._watching: dict[str, float] = {}  # page -> when its timer was started

    @property
    def outputs(self) -> list[Any]:
        """What `page` may update: what `shown_result` updates, then the form."""
        t = self.tab
        fixed = [
            *result_outputs(t),
            t.width,
            t.height,
            t.preset,
        ]
        return fixed + [t.notes[name] for name in NOTED]

    def watch_start(self, request: gr.Request) -> Any:
        """Generate was pressed: start the page's timer that asks for the queue place."""
        self._watching[request.session_hash or ""] = time.monotonic()
        return gr.Timer(active=True)

    def watch_stop(self, request: gr.Request) -> tuple[Any, Any]:
        self._watching.pop(request.session_hash or "", None)
        return _shown(None), gr.Timer(active=False)

    async def watch(self, request: gr.Request) -> tuple[Any, Any]:
        """The page's timer: the line under Generate (its place in the queue, or that the
        server is busy and when it tries again); stops itself once nothing runs."""
        key, lang = request.session_hash or "", language_of(request)
        waiting = self._waiting.get(key)
        if waiting is None:
            if time.monotonic() - self._watching.get(key, 0.0) < WATCH_GRACE_S:
                return gr.skip(), gr.skip()
            return self.watch_stop(request)
        text = None
        if waiting.busy is not None:
            depth, retry_at = waiting.busy
            text = say(lang, "busy", depth=depth, wait=max(0, math.ceil(retry_at - time.monotonic())))
        elif (place := self.service.queue_position(waiting.ticket)) is not None:
            text = say(lang, "queued", place=place, depth=max(place, self.engine.queue_depth))
        return _shown(text), gr.skip()

    async def page(
        self,
        inputs: dict[Any, Any],
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for it)
    ) -> dict[Any, Any]:
        """The page's Generate (its inputs: `tab.form`'s components, as a set): updates for
        the components it changes, never an error."""
        t, lang = self.tab, language_of(request)
        low, high = size_limits(self.engine)
        values = {name: inputs[component] for name, component in t.form.items()}
        form = {name: values[name] for name in NOTED}  # the fields check_form checks
        check = check_form(lang, form, low, high, MAX_UI_BATCH)
        # Every note says this run's word on its field; a size's note from leaving its
        # box ("rounded to 1008") stays until there is something else to say.
        out: dict[Any, Any] = {
            t.notes[name]: field_note(check.errors.get(name) or check.notes.get(name), name in check.errors)
            for name in NOTED
            if name in check.errors or name in check.notes or name not in ("width", "height")
        }
        out |= {getattr(t, name): check.values[name] for name in ("width", "height") if name in check.values}
        if "width" in check.notes or "height" in check.notes:  # a size was snapped
            out[t.preset] = size_preset(check.values.get("width"), check.values.get("height"))
        if check.errors:
            out[t.notice] = _shown(None)
            return out

        key = request.session_hash or ""
        waiting = self._waiting[key] = _Waiting()
        try:
            request_ = GenerationRequest(
                **{n: check.values[n] for n in form if n != "batch_size"}, loras=t.loras.specs(inputs)
            )
            waiting.task = asyncio.ensure_future(
                self._generate(
                    request_,
                    check.values["batch_size"],
                    namespace_of(request),
                    bool(values["no_cache"]),
                    values["prompt_normalization"],
                    waiting,
                    lang,
                    progress,
                )
            )
            results = await waiting.task
        except asyncio.CancelledError:
            if not waiting.detached:
                raise  # the page went away
            out[t.notice] = _shown(None if waiting.chosen else say(lang, "detached"))
            return out
        except JobInterrupted as exc:
            if not waiting.chosen:
                out[t.status] = say(lang, "interrupted", step=exc.step, steps=exc.steps)
            out[t.notice] = _shown(None)
            return out
        except (ValidationError, *EXPECTED) as exc:
            if waiting.chosen and isinstance(exc, JobCancelled):  # out of the queue for a near-repeat
                out[t.notice] = _shown(None)
                return out
            name, text = explain(lang, exc)
            out[t.notes[name] if name else t.notice] = field_note(text, error=True) if name else _shown(text)
            return out
        except StillBusy:
            out[t.notice] = _shown(say(lang, "busy_gave_up", minutes=round(BUSY_GIVE_UP_S / 60)))
            return out
        finally:
            if self._waiting.get(key) is waiting:
                del self._waiting[key]
            self._watching.pop(key, None)  # (a page closed mid-run never stops its timer)

        if waiting.chosen:  # a suggestion was taken meanwhile: it stays in the viewer
            return out
        entries = entries_for(
            self.images,
            namespace_of(request),
            results,
            values["prompt_normalization"],
            self.engine.identity,
        )
        return out | shown_result(
            self.images, t, lang, inputs[t.tz], entries, merge(entries, values["history"])
        )

    async def cancel(self, request: gr.Request) -> Any:
        """Interrupt (the button, or Esc): take this page's job out of the queue, or stop
        waiting for a busy queue, or stop the running job after its denoising step;
        when another caller shares that job, only stop waiting for it (it goes on for
        them, and is stored). The generation itself says which happened."""
        waiting = self._waiting.get(request.session_hash or "")
        if waiting is None:
            return gr.skip()
        waiting.stop = True
        if self.service.cancel(waiting.ticket) or not waiting.ticket.jobs:
            return gr.skip()  # "Cancelled: nothing was generated."
        if not self.service.interrupt(waiting.ticket) and waiting.task is not None:
            waiting.detached = True  # shared: this page stops waiting
            waiting.task.cancel()
        return gr.skip()

    async def choose(self, request: gr.Request) -> None:
        """A near-repeat was used instead of this page's generation (web/ui_similar.py):
        stop it as Interrupt does, and let the generation end without a word."""
        waiting = self._waiting.get(request.session_hash or "")
        if waiting is not None:
            waiting.chosen = True
            await self.cancel(request)

    async def _generate(
        self,
        request: GenerationRequest,
        batch_size: int,
        namespace: str,
        no_cache: bool,
        normalization: str,
        waiting: _Waiting,
        lang: str,
        progress: gr.Progress,
    ) -> list[GenerationResult]:
        """Generate; a full queue is tried again with back-off until BUSY_GIVE_UP_S, or
        until Cancel (`waiting` says which, for the page's timer)."""
        wait, deadline = BUSY_FIRST_WAIT_S, time.monotonic() + BUSY_GIVE_UP_S
        while True:
            if waiting.stop:
                raise JobCancelled("cancelled while the server was busy")
            try:
                return await self.service.generate_batch(
                    request,
                    batch_size,
                    namespace=namespace,
                    no_cache=no_cache,
                    normalization=normalization or None,  # type: ignore[arg-type]
                    progress=progress_reporter(progress, lang),
                    ticket=waiting.ticket,
                )
            except QueueFull as exc:
                if time.monotonic() + wait > deadline:
                    raise StillBusy from None
                until = time.monotonic() + wait
                waiting.busy = (exc.depth, until)
                while time.monotonic() < until and not waiting.stop:  # Cancel ends the wait
                    await asyncio.sleep(min(0.1, until - time.monotonic()))
                waiting.busy = None
                wait = min(wait * 2, BUSY_MAX_WAIT_S)


def shown_result(
    images: UiImages,
    t: CreateTab,
    lang: str,
    tz: str,
    entries: list[dict[str, Any]],
    history: list[dict[str, Any]],
) -> dict[Any, Any]:
    """The updates that show `entries` in the main viewer, with `history` (which holds
    them first) in the history panel and in browser storage."""
    return {
        t.gallery: gr.Gallery(value=gallery(images, lang, entries), selected_index=0),
        t.status: status_line(lang, entries),
        t.notice: _shown(None),
        t.history: history,
        t.stored_history: persistable(history),
        # The new image on top of the whole history (a search is ended).
        t.past: listing(images, lang, tz, history),
        t.listed: history,
        t.picked: None,
        t.history_delete: gr.Button(interactive=False),
        t.history_search: "",
        t.use_settings: gr.Button(interactive=True),
        t.shown: entries,
        t.selected: 0,
        t.parameters: entries[0]["parameters"],
        t.last_seed: entries[0]["params"]["seed"],
        t.reuse: gr.Button(say(lang, "reuse_seed_n", seed=entries[0]["params"]["seed"])),
    }


def progress_reporter(progress: gr.Progress, lang: str) -> Any:
    """A progress callback for the engine's thread that reports to Gradio from the
    event loop, in this event's context (where Gradio's progress reads its state)."""
    loop, context = asyncio.get_running_loop(), contextvars.copy_context()
    desc, unit = say(lang, "denoising"), say(lang, "steps_unit")

    def on_step(done: int, total: int) -> None:
        loop.call_soon_threadsafe(lambda: progress((done, total), desc=desc, unit=unit), context=context)

    return on_step


def _shown(text: str | None) -> gr.Markdown:
    """The queue line or the notice: always on the page (an empty one takes no room,
    static/style.css), so that screen readers announce what it comes to say."""
    return gr.Markdown(text or "")
