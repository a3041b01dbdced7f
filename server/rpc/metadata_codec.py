"""A model answer's candidate metadata (camelCase JSON, the candidate's fields) as proto.

The JSON is kept whole in CandidateMetadata.json; the typed fields are a view of the parts
callers use (sources, supports, ratings, citations), read leniently: a field of the wrong
type reads as empty, since imported metadata is stored as the caller wrote it.
"""

from __future__ import annotations

from typing import Any

from chatd.v1 import content_pb2 as pb
from server.sessions.model import JSONObject
from server.sessions.values import json_text

_INT32 = 2**31 - 1
_SOURCE_KINDS = ("web", "retrievedContext", "maps", "image")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int32(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and -_INT32 <= value <= _INT32
    return value if ok else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _grounding(g: dict[str, Any], out: pb.GroundingMetadata) -> None:
    out.web_search_queries.extend(_str(q) for q in _list(g.get("webSearchQueries")))
    for chunk in map(_dict, _list(g.get("groundingChunks"))):
        source = out.sources.add()
        kind = next((k for k in _SOURCE_KINDS if isinstance(chunk.get(k), dict)), "")
        if kind:
            body = chunk[kind]
            source.kind = kind
            source.uri = _str(body.get("uri"))
            source.title = _str(body.get("title"))
            source.domain = _str(body.get("domain"))
    for support in map(_dict, _list(g.get("groundingSupports"))):
        segment = _dict(support.get("segment"))
        item = out.supports.add(
            start_index=_int32(segment.get("startIndex")),
            end_index=_int32(segment.get("endIndex")),
            part_index=_int32(segment.get("partIndex")),
            text=_str(segment.get("text")),
        )
        item.source_indices.extend(_int32(i) for i in _list(support.get("groundingChunkIndices")))
        item.confidence_scores.extend(_float(c) for c in _list(support.get("confidenceScores")))
    out.search_entry_point_html = _str(_dict(g.get("searchEntryPoint")).get("renderedContent"))


def prompt_feedback_to_pb(feedback: JSONObject, out: pb.PromptFeedback) -> None:
    out.json = json_text(feedback)
    out.block_reason = _str(feedback.get("blockReason"))
    out.block_reason_message = _str(feedback.get("blockReasonMessage"))
    _ratings(feedback.get("safetyRatings"), out.safety_ratings)


def _ratings(ratings: Any, out: Any) -> None:
    for rating in map(_dict, _list(ratings)):
        out.add(
            category=_str(rating.get("category")),
            probability=_str(rating.get("probability")),
            blocked=rating.get("blocked") is True,
        )


def candidate_metadata_to_pb(metadata: JSONObject, out: pb.CandidateMetadata) -> None:
    out.json = json_text(metadata)
    out.finish_message = _str(metadata.get("finishMessage"))
    if isinstance(grounding := metadata.get("groundingMetadata"), dict):
        _grounding(grounding, out.grounding_metadata)
    if isinstance(url_context := metadata.get("urlContextMetadata"), dict):
        out.url_context_metadata.SetInParent()
        for url in map(_dict, _list(url_context.get("urlMetadata"))):
            out.url_context_metadata.url_metadata.add(
                retrieved_url=_str(url.get("retrievedUrl")),
                url_retrieval_status=_str(url.get("urlRetrievalStatus")),
            )
    _ratings(metadata.get("safetyRatings"), out.safety_ratings)
    if isinstance(citations := metadata.get("citationMetadata"), dict):
        out.citation_metadata.SetInParent()
        # Vertex AI names the list `citations`, the Gemini API `citationSources`.
        listed = [*_list(citations.get("citations")), *_list(citations.get("citationSources"))]
        for citation in map(_dict, listed):
            out.citation_metadata.citations.add(
                start_index=_int32(citation.get("startIndex")),
                end_index=_int32(citation.get("endIndex")),
                uri=_str(citation.get("uri")),
                title=_str(citation.get("title")),
                license=_str(citation.get("license")),
            )
