"""The README stays true to the code: every RPC of the contract and every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

from chatd.v1 import chat_service_pb2 as pb
from server.config import _OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_rpc_of_the_contract_is_in_the_api_overview() -> None:
    # A row may name a pair: | `ExportSession` / `ImportSession` | ...
    cells = re.findall(r"^\| (`\w+`(?: / `\w+`)*) \|", README, re.MULTILINE)
    listed = {name for cell in cells for name in re.findall(r"`(\w+)`", cell)}
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["ChatService"].methods}
    assert methods - listed == set()


def test_every_setting_is_in_the_configuration_reference() -> None:
    missing = [
        env
        for _, flag, envs, _ in _OPTIONS
        for env in envs[:1]
        if f"`{env}`" not in README or (flag is not None and f"`{flag}`" not in README)
    ]
    assert missing == []
