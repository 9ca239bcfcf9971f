"""The UI's words: both languages say everything, and the page's language is the browser's."""

from __future__ import annotations

import string

import pytest

from web.ui_text import EDIT_TEXT, EN, MESSAGES, SCRIPT_TEXT, ZH, language, say


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("table", [{"en": EN, "zh": ZH}, MESSAGES, SCRIPT_TEXT, EDIT_TEXT])
def test_every_text_exists_in_both_languages_with_the_same_blanks(table: dict[str, dict[str, str]]) -> None:
    en, zh = table["en"], table["zh"]
    assert en.keys() == zh.keys()
    for key in en:
        assert fields(en[key]) == fields(zh[key]), key


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,zh;q=0.5,en;q=0.3", "zh"),  # the first of ours it prefers
        ("zh-TW", "zh"),
        ("de-DE", "en"),
        ("", "en"),
        (None, "en"),
        ("zh;q=oops, en", "en"),
    ],
)
def test_the_page_speaks_the_language_the_browser_prefers(header: str | None, lang: str) -> None:
    assert language(header) == lang


def test_unknown_languages_fall_back_to_english() -> None:
    assert say("fr", "seed", seed=7) == "seed 7"
    assert say("zh", "seed", seed=7) == "种子 7"


def test_the_stats_plot_counts_each_interval_by_tier_in_the_page_language() -> None:
    from cache import Entry
    from pipeline.request import GenerationRequest
    from pipeline.results import GenerationResult
    from web.ui_stats import BUCKET_S, WINDOW_S, TierTimeline

    def result(tier: str) -> GenerationResult:
        return GenerationResult(
            "k" * 64, tier, Entry(b"x", "png"), GenerationRequest(prompt="p").canonical(), 0.1
        )

    timeline = TierTimeline()
    for tier in ["miss", "miss", "memory", "disk", "miss"]:
        timeline.record(result(tier))
    frame = timeline.frame("zh")
    buckets = WINDOW_S // BUCKET_S
    assert len(frame) == buckets * 3  # memory, disk, miss (redis and bypass never seen): zeros included
    assert frame.groupby("tier")["requests"].sum().to_dict() == {"内存": 1, "磁盘": 1, "未命中": 3}
    assert (frame.groupby("time")["requests"].sum() > 0).sum() <= 2  # in one interval (two, at a turn)


def test_the_page_words_every_failure_of_the_shared_table() -> None:
    """The UI words what web/errors.py's table names (`error_<code>`), in both languages."""
    from pipeline.errors import JobCancelled, QueueFull
    from web.errors import FAILURES
    from web.ui_form import explain

    for failure in FAILURES.values():
        for lang in MESSAGES:
            assert f"error_{failure.code}" in MESSAGES[lang], failure.code
    assert explain("en", QueueFull(3)) == (
        None,
        "The server is busy: the generation queue is full (3 waiting); retry shortly",
    )
    assert explain("zh", JobCancelled("x")) == (None, "已取消：未生成任何图像。")
