"""The part of AUTOMATIC1111's web UI API that image clients use: `POST
/sdapi/v1/txt2img`, and the look-ups they make when connecting (options,
sd-models, samplers, schedulers, loras). Tags `<lora:name:0.8>` in the prompt
name LoRAs, as in A1111; the ControlNet extension's `alwayson_scripts` unit asks
for a control image (web/a1111_controlnet.py).

Tools with an "A1111 backend" setting (Open WebUI, SillyTavern, ...) work with
`<server>` as the A1111 URL. Generation goes through
`GenerationService.generate_batch`, with the same cache, namespaces and API
keys; A1111's HTTP Basic API auth is accepted as `namespace:token`.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import limits
from pipeline.controlnet import EditInput
from pipeline.errors import RequestInvalid
from pipeline.image_metadata import (
    SAMPLER,
    SCHEDULE_TYPE,
    a1111_cfg_scale,
    a1111_parameters,
    model_hash,
    model_name,
)
from pipeline.loading import ModelIdentity
from pipeline.lora import split_prompt_loras
from pipeline.request import GenerationRequest, seed_field, snap_size, steps_field
from pipeline.service import GenerationService
from web.a1111_controlnet import refuse_on_img2img, txt2img_control
from web.a1111_img2img import Img2ImgFields, img2img_input
from web.auth import Namespace, NamespacedRoute
from web.schemas import error_responses

MAX_IMAGES = limits.MAX_API_BATCH
MAX_CFG_SCALE = a1111_cfg_scale(limits.MAX_GUIDANCE)  # guidance_scale 20 in A1111's convention
SNAPPED = f"Snapped to the nearest multiple of {limits.SIZE_MULTIPLE} within the model's range."
# A1111's fields that are ours too, by name and meaning.
SAME_FIELDS = {"prompt", "negative_prompt", "seed", "steps"}
# A1111's names for our request fields, for error locations.
A1111_FIELD = {"guidance_scale": "cfg_scale"}


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img body. The fields below are used; any other A1111 field
    (`sampler_name`, `scheduler`, `restore_faces`, `override_settings`, ...) is
    accepted and ignored, whatever it holds (and not echoed in `parameters`):
    this server has one model and one sampler."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field("", description=f"What to draw; 1 to {limits.MAX_PROMPT_CHARS} characters.")
    negative_prompt: str = Field("", description="What to avoid; only used when cfg_scale > 1.")
    seed: int = seed_field(limits.RANDOM_SEED)
    steps: int = steps_field()
    cfg_scale: float = Field(
        1.0,
        description="A1111's CFG scale: 1 or less turns guidance off (Turbo's setting); c above 1 is our "
        f"guidance_scale c - 1, up to {MAX_CFG_SCALE:g}.",
    )
    width: int = Field(limits.DEFAULT_SIZE, description=SNAPPED)
    height: int = Field(limits.DEFAULT_SIZE, description=SNAPPED)
    batch_size: int = Field(
        1, ge=1, le=MAX_IMAGES, description=f"Images per batch; batch_size x n_iter <= {MAX_IMAGES}."
    )
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES, description="Batches; image i has seed `seed + i`.")


class Img2ImgRequest(Img2ImgFields, Txt2ImgRequest):
    """A1111's img2img body: txt2img's, and the image fields of web/a1111_img2img.py."""


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="The PNG images, base64-encoded.")
    parameters: dict[str, Any] = Field(description="The request as served (sizes snapped, defaults filled).")
    info: str = Field(description="JSON text: seeds, infotexts, model, and `cache` (the tier of each image).")


class Options(BaseModel):
    sd_model_checkpoint: str = Field(description="The served model, as `name [hash]`.")


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str
    sha256: str | None = None
    filename: str
    config: str | None = None


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None


class Lora(BaseModel):
    """One entry of `/sdapi/v1/loras`, as A1111 lists it."""

    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


def create_a1111_router(service: GenerationService) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", route_class=NamespacedRoute, tags=["A1111-compatible"])

    @router.post(
        "/txt2img", response_model=Txt2ImgResponse, responses=error_responses(401, 403, 413, 422, 500, 503)
    )
    async def txt2img(body: Txt2ImgRequest, namespace: Namespace) -> Txt2ImgResponse:
        """A1111's text-to-image: `batch_size` x `n_iter` PNG images of one prompt (guided
        by a control image with a ControlNet unit in `alwayson_scripts`)."""
        control = await txt2img_control(body.model_extra, await service.controlnet_fingerprint())
        return await serve(body, namespace, control)

    @router.post(
        "/img2img", response_model=Txt2ImgResponse, responses=error_responses(401, 403, 413, 422, 500, 503)
    )
    async def img2img(body: Img2ImgRequest, namespace: Namespace) -> Txt2ImgResponse:
        """A1111's image-to-image: txt2img from `init_images[0]`, inpainting with a `mask`."""
        refuse_on_img2img(body.model_extra)
        return await serve(body, namespace, await img2img_input(body))

    async def serve(body: Txt2ImgRequest, namespace: str, image: EditInput | None = None) -> Txt2ImgResponse:
        """txt2img, and with `image` img2img (web/a1111_img2img.py) or ControlNet
        (web/a1111_controlnet.py): the generation and A1111's answer."""
        identity = await service.model_identity()
        if not math.isfinite(body.cfg_scale) or body.cfg_scale > MAX_CFG_SCALE:
            raise RequestInvalid(
                "cfg_scale",
                f"cfg_scale must be a finite number up to {MAX_CFG_SCALE:g}; 1 turns guidance off",
            )
        count = body.batch_size * body.n_iter
        if count > MAX_IMAGES:
            raise RequestInvalid("batch_size", f"batch_size x n_iter is {count}; at most {MAX_IMAGES} images")
        width = snap_size(body.width, identity.min_size, identity.max_size)
        height = snap_size(body.height, identity.min_size, identity.max_size)
        try:
            prompt, loras = split_prompt_loras(body.prompt)  # `<lora:name:0.8>`, as A1111 reads it
        except ValueError as exc:
            raise RequestInvalid("prompt", str(exc)) from None
        try:
            request = GenerationRequest(
                **body.model_dump(include=SAME_FIELDS - {"prompt"}),
                prompt=prompt,
                loras=loras,
                width=width,
                height=height,
                guidance_scale=max(0.0, body.cfg_scale - 1.0),
            )
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", A1111_FIELD.get(str(e["loc"][0]), e["loc"][0]))} for e in exc.errors()]
            ) from None
        results = await service.generate_batch(request, count, namespace=namespace, image=image)
        # The fields we ignore are not echoed: they are the client's to send, and
        # anything at all (a lone surrogate cannot even be written out as JSON).
        served = {**body.model_dump(exclude=set(body.model_extra or ())), "width": width, "height": height}
        served["seed"] = results[0].seed
        served |= {"batch_size": body.batch_size, "sampler_name": SAMPLER, "scheduler": SCHEDULE_TYPE}
        infotexts = [a1111_parameters(r.request, identity, r.loras) for r in results]
        info = {
            "prompt": results[0].request.prompt,
            "all_prompts": [r.request.prompt for r in results],
            "negative_prompt": results[0].request.negative_prompt,
            "all_negative_prompts": [r.request.negative_prompt for r in results],
            "seed": results[0].seed,
            "all_seeds": [r.seed for r in results],
            "subseed": -1,
            "all_subseeds": [-1] * len(results),
            "width": width,
            "height": height,
            "sampler_name": SAMPLER,
            "scheduler": SCHEDULE_TYPE,
            "cfg_scale": body.cfg_scale,
            "steps": request.steps,
            "batch_size": body.batch_size,
            "sd_model_name": model_name(identity),
            "sd_model_hash": model_hash(identity),
            "index_of_first_image": 0,
            "infotexts": infotexts,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "cache": [r.cache for r in results],
            "keys": [r.key for r in results],
        }
        return Txt2ImgResponse(
            images=[base64.b64encode(r.entry.data).decode() for r in results],
            parameters=served,
            info=json.dumps(info, ensure_ascii=False),
        )

    @router.get("/options", response_model=Options, responses=error_responses(401, 403, 422, 503))
    async def options(_: Namespace) -> Options:
        """The setting clients read when connecting: the loaded checkpoint."""
        return Options(sd_model_checkpoint=_checkpoint(await service.model_identity()).title)

    @router.post(
        "/options",
        responses={
            200: {
                "description": "null, as A1111 answers.",
                "content": {"application/json": {"schema": {"type": "null"}}},
            },
            **error_responses(401, 403, 413, 422),
        },
    )
    async def set_options(_: Namespace, settings: Annotated[dict[str, Any], Body()]) -> None:
        """Accepted and ignored (clients post the checkpoint they chose; there is one)."""
        return None

    @router.get("/sd-models", response_model=list[SdModel], responses=error_responses(401, 403, 422, 503))
    async def sd_models(_: Namespace) -> list[SdModel]:
        """The one model this server serves, as an A1111 checkpoint."""
        return [_checkpoint(await service.model_identity())]

    @router.get("/loras", response_model=list[Lora], responses=error_responses(401, 403, 422, 503))
    async def loras(_: Namespace) -> list[Lora]:
        """The LoRAs a prompt may name as `<lora:name:scale>` (in the shape of A1111;
        `path` is the file name only: the server's folders are not shown)."""
        return [
            Lora(name=lora["name"], alias=lora["name"], path=lora["file"], metadata={})
            for lora in await service.lora_listing()
        ]

    @router.get("/progress", responses=error_responses(401, 403, 422))
    async def progress(_: Namespace) -> dict[str, Any]:
        """A1111's progress, from the engine: the model call running now (its step and
        step count) and the jobs waiting. `webuiapi`'s `util_wait_for_ready` waits for
        progress 0 and no jobs. No preview image (`current_image` null)."""
        engine = service.engine
        running = engine.current_step
        step, steps = running if running is not None else (0, 0)
        state = {
            "skipped": False,
            "interrupted": False,
            "job": "txt2img" if running is not None else "",
            "job_count": engine.queue_depth + (1 if running is not None else 0),
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": steps,
        }
        done = step / steps if steps else 0.0
        return {
            "progress": done,
            "eta_relative": 0.0,
            "state": state,
            "current_image": None,
            "textinfo": None,
        }

    @router.get("/cmd-flags", responses=error_responses(401, 403, 422))
    async def cmd_flags(_: Namespace) -> dict[str, Any]:
        """A1111's command-line flags: none of them applies here (honestly empty)."""
        return {}

    @router.get("/upscalers", responses=error_responses(401, 403, 422))
    async def upscalers(_: Namespace) -> list[dict[str, Any]]:
        """No upscalers are served (honestly empty)."""
        return []

    @router.get("/samplers", response_model=list[Sampler], responses=error_responses(401, 403, 422))
    async def samplers(_: Namespace) -> list[Sampler]:
        return [Sampler(name=SAMPLER, aliases=["k_euler"], options={})]

    @router.get("/schedulers", response_model=list[Scheduler], responses=error_responses(401, 403, 422))
    async def schedulers(_: Namespace) -> list[Scheduler]:
        return [Scheduler(name=SCHEDULE_TYPE.lower(), label=SCHEDULE_TYPE)]

    return router


def _checkpoint(identity: ModelIdentity) -> SdModel:
    name, short = model_name(identity), model_hash(identity)
    return SdModel(title=f"{name} [{short}]", model_name=name, hash=short, filename=identity.model_id)
