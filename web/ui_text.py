"""The UI's words in English and Chinese, and example prompts.

Two kinds: labels fixed when the page is built (`I18N`, translated in the browser
by Gradio from the browser language), and texts the server writes while the page
runs (status lines, captions, errors, statistics; `say`), in the language the
browser asks for in `Accept-Language`. Both sets have the same keys in both
languages (tests/test_ui_text.py checks it).
"""

from __future__ import annotations

import re
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import unquote

import gradio as gr

from pipeline.limits import MAX_LORAS, UI_HISTORY_LIMIT

EN = {
    "tab_generate": "Create",
    "tab_stats": "Stats",
    "tab_edit": "Edit an image",
    "prompt": "Prompt",
    "prompt_placeholder": "A red fox in fresh snow, morning light",
    "prompt_info": "Ctrl+Enter (or Shift+Enter) generates.",
    "examples": "Examples",
    "resolution": "Resolution",
    "width": "Width",
    "height": "Height",
    "seed": "Seed (-1 = new each time)",
    "random_seed": "Random",
    "reuse_seed": "Reuse last",
    "batch_size": "Batch size",
    "bypass_cache": "Bypass cache",
    "advanced": "Advanced",
    "steps": "Steps",
    "guidance": "Guidance",
    "negative_prompt": "Negative prompt",
    "negative_note": "Only used when guidance > 0 (Turbo runs with 0).",
    "normalization": "Prompt normalization",
    "normalization_note": "Basic: trim and collapse spaces; aggressive: also full-width to half-width "
    "and lower case.",
    "generate": "Generate",
    "cancel": "Interrupt",
    "results": "Images",
    "similar_heading": "Already made for similar prompts",
    "png_info": "PNG Info",
    "png_info_note": "Choose or drop a PNG (ours, or one A1111 wrote) to read its settings into the form. "
    "The file stays in your browser.",
    "similar_info": "Click one to use it instead of waiting.",
    "use_settings": "Use these settings",
    "loras": "LoRA",
    **{f"lora_{i}": f"LoRA {i}" for i in range(1, MAX_LORAS + 1)},
    **{f"lora_scale_{i}": f"LoRA {i} scale" for i in range(1, MAX_LORAS + 1)},
    "parameters": "Parameters (A1111 format)",
    "history": f"**History**: the last {UI_HISTORY_LIMIT} images, kept in this browser; click one to see it "
    "and restore its settings.",
    "history_search": "Search the history",
    "history_search_placeholder": "words of a prompt, or a seed",
    "history_delete": "Delete",
    "history_clear": "Clear all",
    "requests_plot": "Requests per 10 s, by where the answer came from",
    "tiers_table": "Cache tiers",
    "demo_banner": "**Demo model.** No CUDA GPU was found, so this server runs the tiny random-weight model: "
    "images are noise, but the cache, the UI and the API behave exactly as in production.",
    "state_loading": "**Model loading…** Cached images are served already; new ones wait until it is ready.",
    "state_warming": "**Model warming up…** Cached images are served already; new ones wait until it is ready.",
    # Gradio's own screen-reader announcement when an event ends; Gradio 6.31 ships
    # no text for it in any language, so the page would announce the key.
    "common.complete": "Complete",
}

ZH = {
    "tab_generate": "创作",
    "tab_stats": "统计",
    "tab_edit": "编辑图像",
    "prompt": "提示词",
    "prompt_placeholder": "清晨的雪地里，一只红狐狸",
    "prompt_info": "按 Ctrl+Enter（或 Shift+Enter）生成。",
    "examples": "示例",
    "resolution": "分辨率",
    "width": "宽度",
    "height": "高度",
    "seed": "种子（-1 为每次随机）",
    "random_seed": "随机",
    "reuse_seed": "复用上次",
    "batch_size": "批量数量",
    "bypass_cache": "绕过缓存",
    "advanced": "高级设置",
    "steps": "步数",
    "guidance": "引导系数",
    "negative_prompt": "反向提示词",
    "negative_note": "仅在引导系数大于 0 时生效（Turbo 使用 0）。",
    "normalization": "提示词规范化",
    "normalization_note": "基本：去除首尾空白并合并空格；激进：另将全角转为半角并转为小写。",
    "generate": "生成",
    "cancel": "中断",
    "results": "图像",
    "similar_heading": "已为相似提示生成的图像",
    "png_info": "PNG 信息",
    "png_info_note": "选择或拖入一张 PNG（本服务或 A1111 生成的），将其参数读入表单。文件不会离开你的浏览器。",
    "similar_info": "点击其中一张即可直接使用，无需等待。",
    "use_settings": "使用此图参数",
    "loras": "LoRA",
    **{f"lora_{i}": f"LoRA {i}" for i in range(1, MAX_LORAS + 1)},
    **{f"lora_scale_{i}": f"LoRA {i} 强度" for i in range(1, MAX_LORAS + 1)},
    "parameters": "生成参数（A1111 格式）",
    "history": f"**历史记录**：本浏览器中保存的最近 {UI_HISTORY_LIMIT} 张图像；点击查看并恢复其参数。",
    "history_search": "搜索历史记录",
    "history_search_placeholder": "提示词中的文字，或种子",
    "history_delete": "删除",
    "history_clear": "全部清除",
    "requests_plot": "每 10 秒的请求数，按结果来源",
    "tiers_table": "缓存层",
    "demo_banner": "**演示模型。** 未检测到 CUDA GPU，服务器运行的是随机权重的微型模型："
    "图像是噪声，但缓存、界面和 API 的行为与生产环境完全一致。",
    "state_loading": "**模型加载中……** 已缓存的图像可以立即返回；新图像需等待模型就绪。",
    "state_warming": "**模型预热中……** 已缓存的图像可以立即返回；新图像需等待模型就绪。",
    "common.complete": "完成",
}

I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH, "zh-TW": ZH})

# Texts the server writes while the page runs, by language ("en", "zh").
MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "tier_memory": "memory",
        "tier_disk": "disk",
        "tier_redis": "redis",
        "tier_miss": "miss",
        "tier_bypass": "bypass",
        "tier_similar": "similar",
        "similar_caption": "{score:.0%} · {prompt}",
        "similar_gone": "That image is no longer stored.",
        "png_read": "Settings read from the image.",
        "png_none": "This file holds no generation parameters.",
        "lora_none": "None",
        "png_lora_missing": "LoRAs this server does not have were left out: {names}.",
        "hit": "{tier} hit · {took}",
        "generated": "{tier} · generated in {took}",
        "seed": "seed {seed}",
        "seeds": "seeds {seeds}",
        "reuse_seed_n": "Reuse {seed}",
        "ms": "{n:.1f} ms",
        "s": "{n:.2f} s",
        "denoising": "denoising",
        "steps_unit": "steps",
        "queued": "In the queue: {place} of {depth} · Interrupt (or Esc) takes it out",
        "busy": "The server is busy ({depth} generations waiting); trying again in {wait} s…",
        "busy_gave_up": "The server stayed busy for {minutes} minutes; press Generate to try again.",
        "error_cancelled": "Cancelled: nothing was generated.",
        "interrupted": "Interrupted at step {step}/{steps}: nothing was stored.",
        "detached": "Stopped waiting: someone else asked for the same image, so it is still being made "
        "for them (and will be stored).",
        "error_model_unavailable": "The model is not available: {reason}",
        "error_generation_failed": "The generation failed: {reason}",
        "error_queue_full": "The server is busy: {reason}",
        "model_failed": "**The model failed to load:** {reason}",
        "field_width": "Width",
        "field_height": "Height",
        "field_steps": "Steps",
        "field_seed": "Seed",
        "field_guidance_scale": "Guidance",
        "field_batch_size": "Batch size",
        "prompt_empty": "Write a prompt first.",
        "too_long": "{field} is {length} characters; shorten it to at most {limit}.",
        "field_prompt": "The prompt",
        "field_negative_prompt": "The negative prompt",
        "out_of_range": "{field} must be between {low} and {high}.",
        "seed_range": "Seed must be -1 (random) or between 0 and {high}.",
        "not_number": "{field} must be a number.",
        "snapped": "Rounded to {value}: sizes are multiples of {multiple}.",
        "clamped_low": "Raised to {value}, the smallest size.",
        "clamped_high": "Lowered to {value}, the largest size.",
        "error_invalid_value": "{reason}",
        "stats_line": "**Requests** {requests} · **hit rate** {hit_rate} · **generations** {generations} · "
        "**queue** {queue}",
        "latency_generation": "**Generation latency** {value}",
        "latency_hit": "**Hit latency** {value}",
        "near_line": "**Near-repeats** {suggested} misses given {suggestions} suggestions · **used** {used} · "
        "**close matches served** {approximate} · **prompts indexed** {prompts}",
        "percentiles": "p50 {p50} · p95 {p95} ({count})",
        "col_tier": "tier",
        "col_hits": "hits",
        "col_entries": "entries",
        "col_mib": "MiB",
        "col_errors": "errors",
        "axis_time": "Time",
        "axis_requests": "Requests per 10 s",
        "legend_tier": "Answered by",
        "custom": "Custom",
        "norm_basic": "basic",
        "norm_none": "none",
        "norm_aggressive": "aggressive",
    },
    "zh": {
        "tier_memory": "内存",
        "tier_disk": "磁盘",
        "tier_redis": "Redis",
        "tier_miss": "未命中",
        "tier_bypass": "绕过缓存",
        "tier_similar": "相似",
        "similar_caption": "{score:.0%} · {prompt}",
        "similar_gone": "该图像已不在缓存中。",
        "png_read": "已从图像中读取参数。",
        "png_none": "此文件不含生成参数。",
        "lora_none": "无",
        "png_lora_missing": "本服务器没有以下 LoRA，已略去：{names}。",
        "hit": "{tier}命中 · {took}",
        "generated": "{tier} · 生成用时 {took}",
        "seed": "种子 {seed}",
        "seeds": "种子 {seeds}",
        "reuse_seed_n": "复用 {seed}",
        "ms": "{n:.1f} 毫秒",
        "s": "{n:.2f} 秒",
        "denoising": "去噪",
        "steps_unit": "步",
        "queued": "排队中：第 {place} 位，共 {depth} 个 · 可点“中断”（或按 Esc）退出排队",
        "busy": "服务器繁忙（{depth} 个生成任务在等待），{wait} 秒后自动重试……",
        "busy_gave_up": "服务器持续繁忙已 {minutes} 分钟；请再次点击“生成”重试。",
        "error_cancelled": "已取消：未生成任何图像。",
        "interrupted": "已在第 {step}/{steps} 步中断：未保存任何内容。",
        "detached": "已停止等待：其他人也在等待同一图像，它仍会为他们生成（并保存）。",
        "error_model_unavailable": "模型不可用：{reason}",
        "error_generation_failed": "生成失败：{reason}",
        "error_queue_full": "服务器繁忙：{reason}",
        "model_failed": "**模型加载失败：** {reason}",
        "field_width": "宽度",
        "field_height": "高度",
        "field_steps": "步数",
        "field_seed": "种子",
        "field_guidance_scale": "引导系数",
        "field_batch_size": "批量数量",
        "prompt_empty": "请先输入提示词。",
        "too_long": "{field}共 {length} 个字符，请缩短到 {limit} 个以内。",
        "field_prompt": "提示词",
        "field_negative_prompt": "反向提示词",
        "out_of_range": "{field}须在 {low} 到 {high} 之间。",
        "seed_range": "种子须为 -1（随机）或 0 到 {high} 之间的整数。",
        "not_number": "{field}必须是数字。",
        "snapped": "已调整为 {value}：尺寸须为 {multiple} 的倍数。",
        "clamped_low": "已调整为最小尺寸 {value}。",
        "clamped_high": "已调整为最大尺寸 {value}。",
        "error_invalid_value": "请求无效：{reason}",
        "stats_line": "**请求** {requests} · **命中率** {hit_rate} · **生成次数** {generations} · **排队** {queue}",
        "latency_generation": "**生成延迟** {value}",
        "latency_hit": "**命中延迟** {value}",
        "near_line": "**相似提示** {suggested} 次未命中给出 {suggestions} 条建议 · **已采用** {used} · "
        "**采用近似结果** {approximate} 次 · **已索引提示** {prompts} 条",
        "percentiles": "p50 {p50} · p95 {p95}（{count} 次）",
        "col_tier": "缓存层",
        "col_hits": "命中",
        "col_entries": "条目",
        "col_mib": "大小（MiB）",
        "col_errors": "错误",
        "axis_time": "时间",
        "axis_requests": "每 10 秒请求数",
        "legend_tier": "结果来源",
        "custom": "自定义",
        "norm_basic": "基本",
        "norm_none": "不处理",
        "norm_aggressive": "激进",
    },
}

# What the page's own script needs to say (the character counter), by language.
SCRIPT_TEXT = {
    "en": {
        "clear_history": "Delete all the images of the history from this browser?",
        "prompt_too_long": "The prompt is {length} characters; shorten it to at most {limit}.",
        "negative_too_long": "The negative prompt is {length} characters; shorten it to at most {limit}.",
        "too_long": "Too long: at most {limit} characters.",
        "range": "Goes from {min} to {max}: set to {value}.",
        "png_file": "A PNG to read its settings from",
        "download_all": "Download all",
        **{k: EN[k] for k in ("tab_generate", "tab_edit", "tab_stats")},
    },
    "zh": {
        "clear_history": "从本浏览器中删除历史记录中的所有图像？",
        "prompt_too_long": "提示词共 {length} 个字符，请缩短到 {limit} 个以内。",
        "negative_too_long": "反向提示词共 {length} 个字符，请缩短到 {limit} 个以内。",
        "too_long": "太长：最多 {limit} 个字符。",
        "range": "取值范围 {min} 到 {max}：已设为 {value}。",
        "png_file": "要读取参数的 PNG 图像",
        "download_all": "全部下载",
        **{k: ZH[k] for k in ("tab_generate", "tab_edit", "tab_stats")},
    },
}

# The image tab's words (web/ui_edit.py, static/edit.js), put in by the page's script.
EDIT_TEXT = {
    "en": {
        "file": "Image (PNG, JPEG or WebP)",
        "file_note": "The image goes only to this server's edit route; it is never stored.",
        "mask": "Paint over what to redraw (leave it unpainted to redraw the whole image)",
        "brush": "Brush size",
        "clear": "Clear the mask",
        "strength": "Strength (how much is redrawn)",
        "prompt": "Prompt",
        "seed": "Seed",
        "generate": "Edit",
        "result": "The edited image",
        "no_image": "Choose an image first.",
        "no_prompt": "Write a prompt first.",
        "working": "Working…",
        "done": "{kind} · {cache} · seed {seed} · {seconds} s",
        "failed": "Not done: {reason}",
        "control": "ControlNet",
        "control_use": "Use the image as a control image",
        "control_note": "The new image follows the chosen image as an edge, depth or pose map "
        "(no mask or strength then).",
        "control_off": "This server has no ControlNet: start it with --controlnet "
        "(--controlnet tiny with the demo model).",
        "control_kind": "Control kind",
        "control_scale": "Control scale (how closely it is followed)",
        "lora": "LoRA",
        "lora_none": "None",
        "lora_scale": "LoRA scale",
    },
    "zh": {
        "file": "图像（PNG、JPEG 或 WebP）",
        "file_note": "图像只发送到本服务器的编辑接口，不会被保存。",
        "mask": "涂抹需要重绘的区域（不涂抹则重绘整张图像）",
        "brush": "画笔大小",
        "clear": "清除蒙版",
        "strength": "重绘强度",
        "prompt": "提示词",
        "seed": "种子",
        "generate": "编辑",
        "result": "编辑后的图像",
        "no_image": "请先选择一张图像。",
        "no_prompt": "请先输入提示词。",
        "working": "处理中……",
        "done": "{kind} · {cache} · 种子 {seed} · {seconds} 秒",
        "failed": "未完成：{reason}",
        "control": "ControlNet",
        "control_use": "将图像用作控制图",
        "control_note": "新图像按所选图像（边缘图、深度图或姿态图）生成（此时不用蒙版和重绘强度）。",
        "control_off": "本服务器未启用 ControlNet：请用 --controlnet 启动（演示模型用 --controlnet tiny）。",
        "control_kind": "控制类型",
        "control_scale": "控制强度（遵循的程度）",
        "lora": "LoRA",
        "lora_none": "不使用",
        "lora_scale": "LoRA 强度",
    },
}

LANG_COOKIE = "zimage_lang"  # the locale chosen in the page (static/lang.js writes it)
_TAG = re.compile(r"\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*")


def language(accept_language: str | None) -> str:
    """ "zh" or "en": the first of them the browser prefers (`Accept-Language`, with
    q-values); English when it names neither."""
    best, best_q = "en", -1.0
    for part in (accept_language or "").split(","):
        match = _TAG.fullmatch(part)
        if not match:
            continue
        try:
            q = float(match[2]) if match[2] else 1.0
        except ValueError:
            continue
        lang = match[1].lower()
        if lang in MESSAGES and q > best_q:
            best, best_q = lang, q
    return best


def language_of(request: Any) -> str:
    """The page's language ("en" or "zh") for a Gradio request: the one chosen in the
    page's Settings -> Language (its LANG_COOKIE, static/lang.js), else its
    Accept-Language's."""
    headers = getattr(request, "headers", None) or {}
    chosen = chosen_language(headers.get("cookie"))
    return language(chosen) if chosen else language(headers.get("accept-language"))


def chosen_language(cookie_header: str | None) -> str | None:
    """The locale LANG_COOKIE names in a Cookie header ("zh-CN"), or None (none, or
    a header that does not parse)."""
    cookies = SimpleCookie()
    try:
        cookies.load(cookie_header or "")
    except CookieError:
        return None
    found = cookies.get(LANG_COOKIE)
    return unquote(found.value) if found else None


def say(lang: str, key: str, **values: Any) -> str:
    """The text `key` in `lang` (English for an unknown language), filled in."""
    return MESSAGES.get(lang, MESSAGES["en"])[key].format(**values)


EXAMPLES = [
    ["A red fox in fresh snow at sunrise, soft golden light, 35mm photo"],
    ["A cozy reading nook with a rain-streaked window, watercolor"],
    ["一只在樱花树下打盹的橘猫，柔和的春日阳光，胶片质感"],
    ["古风山水画，云雾缭绕的群山与一叶扁舟"],
]
