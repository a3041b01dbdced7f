"""Merging a turn's generation config over a session's, and summing usage by modality."""

from __future__ import annotations

from server.sessions.model import GenerationConfig, ThinkingConfig, ToolConfig, Usage


def merged(turn: GenerationConfig, session: GenerationConfig) -> GenerationConfig:
    return turn.merged_over(session)


def test_a_level_replaces_a_budget_and_a_budget_a_level() -> None:
    """Gemini refuses a budget and a level together, so one set per turn drops the other."""
    budget = GenerationConfig(thinking=ThinkingConfig(include_thoughts=True, thinking_budget=512))
    level = GenerationConfig(thinking=ThinkingConfig(thinking_level="HIGH"))
    assert merged(level, budget).thinking == ThinkingConfig(True, None, "HIGH")
    assert merged(budget, level).thinking == ThinkingConfig(True, 512, None)
    # Only include_thoughts in the turn: the session's budget or level stays.
    shown = GenerationConfig(thinking=ThinkingConfig(include_thoughts=False))
    assert merged(shown, budget).thinking == ThinkingConfig(False, 512, None)
    assert merged(shown, level).thinking == ThinkingConfig(False, None, "HIGH")


def test_tool_config_is_replaced_whole_and_other_settings_inherit() -> None:
    session = GenerationConfig(
        temperature=0.5,
        tool_config=ToolConfig("ANY", ("f",)),
        service_tier="flex",
        media_resolution="MEDIA_RESOLUTION_LOW",
        cached_content="cachedContents/a",
    )
    turn = GenerationConfig(tool_config=ToolConfig("AUTO"), service_tier="priority")
    out = merged(turn, session)
    assert out.tool_config == ToolConfig("AUTO", ())
    assert out.service_tier == "priority"
    assert (out.temperature, out.media_resolution, out.cached_content) == (
        0.5,
        "MEDIA_RESOLUTION_LOW",
        "cachedContents/a",
    )


def test_usage_sums_details_by_modality_and_keeps_no_traffic_type() -> None:
    a = Usage(prompt_tokens=3, prompt_details=(("TEXT", 1), ("IMAGE", 2)), traffic_type="X")
    b = Usage(prompt_tokens=4, prompt_details=(("AUDIO", 3), ("TEXT", 1)), traffic_type="X")
    total = a + b
    assert total.prompt_tokens == 7
    assert total.prompt_details == (("TEXT", 2), ("IMAGE", 2), ("AUDIO", 3))
    assert total.traffic_type == ""
    assert (Usage() + a).prompt_details == a.prompt_details
