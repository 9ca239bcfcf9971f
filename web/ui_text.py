"""The UI's words in English and Chinese (chosen from the browser language), and example prompts."""

from __future__ import annotations

import gradio as gr

EN = {
    "tab_generate": "Generate",
    "tab_stats": "Stats",
    "prompt": "Prompt",
    "prompt_placeholder": "A red fox in fresh snow, morning light",
    "examples": "Examples",
    "resolution": "Resolution",
    "width": "Width",
    "height": "Height",
    "seed": "Seed (-1 = random)",
    "random_seed": "Random seed",
    "batch_size": "Batch size",
    "bypass_cache": "Bypass cache",
    "advanced": "Advanced",
    "steps": "Steps",
    "guidance": "Guidance",
    "negative_prompt": "Negative prompt",
    "negative_note": "Only used when guidance > 0 (Turbo runs with 0).",
    "normalization": "Prompt normalization",
    "normalization_note": "basic: trim and collapse spaces; aggressive: also full-width to half-width and lower case.",
    "generate": "Generate",
    "results": "Images",
    "history": "History (this session; click to restore)",
    "hit_rate_plot": "Share of requests answered by each tier",
    "tiers_table": "Cache tiers",
    "demo_banner": "**Demo model.** No CUDA GPU was found, so this server runs the tiny random-weight model: "
    "images are noise, but the cache, the UI and the API behave exactly as in production.",
    "state_loading": "**Model loading…** Cached images are served already; new ones wait until it is ready.",
    "state_warming": "**Model warming up…** Cached images are served already; new ones wait until it is ready.",
}

ZH = {
    "tab_generate": "生成",
    "tab_stats": "统计",
    "prompt": "提示词",
    "prompt_placeholder": "清晨的雪地里，一只红狐狸",
    "examples": "示例",
    "resolution": "分辨率",
    "width": "宽度",
    "height": "高度",
    "seed": "种子（-1 为随机）",
    "random_seed": "随机种子",
    "batch_size": "批量数量",
    "bypass_cache": "绕过缓存",
    "advanced": "高级设置",
    "steps": "步数",
    "guidance": "引导系数",
    "negative_prompt": "反向提示词",
    "negative_note": "仅在引导系数大于 0 时生效（Turbo 使用 0）。",
    "normalization": "提示词规范化",
    "normalization_note": "basic：去除首尾空白并合并空格；aggressive：另将全角转为半角并转为小写。",
    "generate": "生成",
    "results": "图像",
    "history": "历史记录（本次会话，点击恢复参数）",
    "hit_rate_plot": "各缓存层响应的请求比例",
    "tiers_table": "缓存层",
    "demo_banner": "**演示模型。** 未检测到 CUDA GPU，服务器运行的是随机权重的微型模型："
    "图像是噪声，但缓存、界面和 API 的行为与生产环境完全一致。",
    "state_loading": "**模型加载中……** 已缓存的图像可以立即返回；新图像需等待模型就绪。",
    "state_warming": "**模型预热中……** 已缓存的图像可以立即返回；新图像需等待模型就绪。",
}

I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH, "zh-TW": ZH})

EXAMPLES = [
    ["A red fox in fresh snow at sunrise, soft golden light, 35mm photo"],
    ["A cozy reading nook with a rain-streaked window, watercolor"],
    ["一只在樱花树下打盹的橘猫，柔和的春日阳光，胶片质感"],
    ["古风山水画，云雾缭绕的群山与一叶扁舟"],
]
