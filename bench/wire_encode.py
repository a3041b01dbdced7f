"""The CPU cost of one Gemini request body: chatd's encoder against google-genai's build.

    .venv/bin/python -m bench.wire_encode [--repeat N]

For histories of 20 and 1,000 messages (bench/gemini.py's history: alternating user and
model messages of about 200 characters) plus the turn's user message, with a system
instruction, two function declarations and a few sampling settings, it prints the median
CPU µs (of the benchmark's thread, so that other processes on the machine do not count) of:

- encoder cold: RequestEncoder.generate_body on Message objects never encoded before;
- encoder warm: the same request again (every message a memo hit);
- encoder next turn: the history encoded before plus two new messages (the last turn's
  answer and this turn's question), what a cached session's turn costs;
- api_version warm: RequestEncoder.api_version on the warm history (the Gemini API's
  version check, a second pass over the memo);
- SDK types: tests/sdk_oracle.py's to_contents + to_config (the SDK-typed values the
  provider built each turn);
- SDK build: from those types, what google-genai does to make the body
  (types._GenerateContentParameters, models._GenerateContentParameters_to_mldev,
  _common.convert_to_dict, encode_unserializable_types, json.dumps), as the provider's
  count path did;
- SDK total: the two together.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from google import genai
from google.genai import _common, types
from google.genai import models as sdk_models

from bench.gemini import history_texts
from server.providers.gemini.wire import RequestEncoder
from server.sessions.model import FunctionDeclaration, GenerationConfig, Message, Part, Role
from server.sessions.ports import ModelRequest
from tests import sdk_oracle

T = TypeVar("T")
MODEL = "gemini-2.5-flash"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def history(count: int) -> list[Message]:
    return [
        Message(Role(role), (Part(text=text),), seq=i, model=MODEL if role == "model" else "")
        for i, (role, text) in enumerate(history_texts(count))
    ]


def request(messages: list[Message]) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        contents=messages,
        system_instruction="You are terse.",
        generation_config=GenerationConfig(temperature=0.7, max_output_tokens=512),
        function_declarations=[
            FunctionDeclaration("get_weather", "Looks up the weather", SCHEMA),
            FunctionDeclaration("no_params"),
        ],
    )


def fresh(messages: list[Message]) -> list[Message]:
    """Equal messages, new objects: nothing of them is in the encoder's memo."""
    return [replace(m) for m in messages]


def median_us(
    run: Callable[[T], object], setup: Callable[[], T], repeat: int, batch: int = 1
) -> float:
    """The median over `repeat` samples of the CPU µs (this thread's) of one `run(setup())`;
    each sample times `batch` calls in a row (setups done before, not timed)."""
    samples = []
    for _ in range(repeat):
        arguments = [setup() for _ in range(batch)]
        gc.collect()
        started = time.thread_time_ns()
        for argument in arguments:
            run(argument)
        samples.append((time.thread_time_ns() - started) / 1000 / batch)
    return statistics.median(samples)


def sdk_body(
    client: genai.Client, contents: list[types.Content], config: types.GenerateContentConfig
) -> bytes:
    api = client._api_client
    parameters = types._GenerateContentParameters(model=MODEL, contents=contents, config=config)
    body = sdk_models._GenerateContentParameters_to_mldev(api, parameters, None, parameters)
    body = {k: v for k, v in body.items() if not k.startswith("_")}
    return json.dumps(_common.encode_unserializable_types(_common.convert_to_dict(body))).encode()


def measure(count: int, repeat: int, client: genai.Client) -> dict[str, float]:
    encoder = RequestEncoder(vertex=False, forward_labels=False)
    base = history(count)
    turn = [*base, Message(Role.USER, (Part(text="And now?"),), seq=count)]
    answer = Message(Role.MODEL, (Part(text="Like this."),), seq=count + 1, model=MODEL)

    def encode(messages: list[Message]) -> bytes:
        return encoder.generate_body(request(messages))

    def next_turn() -> list[Message]:
        new = [replace(answer), Message(Role.USER, (Part(text="More?"),), seq=count + 2)]
        return [*turn, *new]

    cold = median_us(encode, lambda: fresh(turn), repeat)
    encode(turn)
    warm = median_us(encode, lambda: turn, repeat, batch=20)
    following = median_us(encode, next_turn, repeat, batch=20)
    version = median_us(encoder.api_version, lambda: request(turn), repeat, batch=20)

    sdk_request = request(turn)
    sdk_repeat = max(3, repeat // (10 if count > 100 else 1))

    def build_types(_: None) -> tuple[list[types.Content], types.GenerateContentConfig]:
        return (
            sdk_oracle.to_contents(sdk_request.contents, MODEL),
            sdk_oracle.to_config(sdk_request, 120.0),
        )

    built = build_types(None)
    sdk_types = median_us(build_types, lambda: None, sdk_repeat)
    sdk_build = median_us(lambda _: sdk_body(client, *built), lambda: None, sdk_repeat)
    return {
        "encoder cold": cold,
        "encoder warm": warm,
        "encoder next turn": following,
        "api_version warm": version,
        "SDK types": sdk_types,
        "SDK build": sdk_build,
        "SDK total": sdk_types + sdk_build,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    client = genai.Client(api_key="bench")
    rows = {count: measure(count, args.repeat, client) for count in (20, 1000)}
    columns = list(rows[20])
    print(f"{'µs per generate body':<22}" + "".join(f"{c:>18}" for c in columns))
    for count, row in rows.items():
        label = f"{count:,} messages + 1"
        print(f"{label:<22}" + "".join(f"{row[c]:>18,.1f}" for c in columns))
    for count, row in rows.items():
        print(
            f"{count:,} messages: SDK total / encoder next turn = "
            f"{row['SDK total'] / row['encoder next turn']:,.0f}x, "
            f"SDK total / encoder cold = {row['SDK total'] / row['encoder cold']:,.1f}x"
        )


if __name__ == "__main__":
    main()
