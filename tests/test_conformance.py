"""WebSocket protocol conformance: the Autobahn TestSuite cases (run natively by kosoku) against the
service's own WebSocket endpoint, ``/api/v1/channels/<channel>?echo=1`` on a WS channel.

The endpoint is not an echo server: what comes back is the message *envelope* (docs/protocol.md),
and binary frames are refused with 1003 by design. Every case must therefore end in one of:

- ``strict``: kosoku's own verdict passes (OK, NON-STRICT or INFORMATIONAL);
- ``envelope``: kosoku expected the text echoed verbatim and received, instead, exactly as many
  text frames, each a JSON envelope (kosoku then fails the connection itself, so its close verdict
  says nothing about the server);
- ``binary refused``: kosoku expected a binary echo and received the documented
  ``binary_frame`` close frame and close code 1003.

Anything else fails the test. Cases 9.* (performance), 12.* and 13.* (compression, which daphne
does not offer) are excluded. Every connection of a case shares the channel, so cases run
sequentially per channel, in three channels at once (about 40 s); a case disturbed by a message
from the case before it on its channel is run again alone. docs/conformance.md has the results and
explains each class.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

KOSOKU = shutil.which("kosoku") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "kosoku")
CONFIG = """
server:
  max_message_size: 20000000
  publish_rate: 1000000
  publish_burst: 1000000
  max_pending_messages: 100000
  max_pending_bytes: 100000000
  history_size: 0
pubsub:
  driver: "MEMORY"
channels:
  echo-a: {id: "echo-a", type: "WS", max_of_channel_connections: 1000}
  echo-b: {id: "echo-b", type: "WS", max_of_channel_connections: 1000}
  echo-c: {id: "echo-c", type: "WS", max_of_channel_connections: 1000}
""" + "".join(f'  rerun-{index}: {{id: "rerun-{index}", type: "WS"}}\n' for index in range(10))
# Three groups of about the same duration; each runs one case at a time on its own channel.
GROUPS = {
    "echo-a": ["1.*"],
    "echo-b": ["2.*", "3.*", "4.*", "5.*", "7.*", "6.22.*"],
    "echo-c": ["6.*", "10.*"],
}
EXCLUDED = ["9.*", "12.*", "13.*"]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def envelope_of(want: list, got: list) -> bool:
    """Whether ``got`` is the envelope a text echo of ``want`` arrives in (kosoku truncates both)."""
    return want[2] is False and got[0] == "message" and got[2] is False and got[1].startswith('{"id":"')


def classify(case: dict) -> str:
    """``strict``, ``envelope``, ``binary refused`` or ``unexplained``."""
    if case["behavior"] in PASSING and case["behaviorClose"] in PASSING:
        return "strict"
    expected = case["expected"].get("OK", [])
    received = case["received"]
    if len(received) == len(expected) and all(
        envelope_of(want, got) if want[0] == "message" else want == got
        for want, got in zip(expected, received, strict=True)
    ):
        return "envelope"
    if any(event[0] == "message" and event[2] is True for event in expected):
        if (
            len(received) == 1
            and received[0][1].startswith('{"control":"close","code":1003,"error":"binary_frame"')
            and case["remoteCloseCode"] == 1003
        ):
            return "binary refused"
    return "unexplained"


def run_suite(server, report_dir: Path, groups: dict[str, list[str]]) -> dict[str, dict]:
    """Run each group of cases on its own channel, the groups at once; return every case's report."""
    processes = []
    for channel, includes in groups.items():
        outdir = report_dir / channel
        args = [KOSOKU, "-m", "fuzzingclient", "-p", "1", "-o", str(outdir)]
        args += [flag for case in includes for flag in ("-i", case)]
        args += [flag for case in EXCLUDED for flag in ("-x", case)]
        if channel == "echo-c":
            args += ["-x", "6.22.*"]
        args.append(f"{server.ws}/api/v1/channels/{channel}?echo=1")
        processes.append((outdir, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    cases: dict[str, dict] = {}
    for outdir, process in processes:
        output, _ = process.communicate(timeout=150)
        index = outdir / "index.json"
        assert index.exists(), output.decode(errors="replace")[-2000:]
        for case_id in json.loads(index.read_text())["daphne"]:
            report = outdir / f"daphne_case_{case_id.replace('.', '_')}.json"
            cases[case_id] = json.loads(report.read_text())
    return cases


@pytest.mark.timeout(240)
def test_autobahn_cases_pass_or_differ_only_by_design(start_server, tmp_path):
    server = start_server(CONFIG)
    cases = run_suite(server, tmp_path / "kosoku", GROUPS)
    classes = {case_id: classify(case) for case_id, case in cases.items()}
    # Consecutive cases share a channel: a message the previous case published can reach the next
    # case's connection while the previous one closes. Such a case is run again alone on a channel
    # of its own; it counts as it does there.
    crossed = [case_id for case_id, kind in classes.items() if kind == "unexplained"]
    if 0 < len(crossed) <= 10:
        rerun = run_suite(server, tmp_path / "rerun", {f"rerun-{i}": [case_id] for i, case_id in enumerate(crossed)})
        print(f"kosoku: run again alone: {crossed}")
        cases.update(rerun)
        classes.update({case_id: classify(case) for case_id, case in rerun.items()})
    counts = Counter(classes.values())
    verdicts = Counter((case["behavior"], case["behaviorClose"]) for case in cases.values())
    print(f"kosoku: {len(cases)} cases; {dict(counts)}; kosoku verdicts {dict(verdicts)}")
    unexplained = {
        case_id: (case["behavior"], case["behaviorClose"], case["expected"], case["received"][:4])
        for case_id, case in cases.items()
        if classes[case_id] == "unexplained"
    }
    assert unexplained == {}
    assert len(cases) >= 240, "the suite ran only part of its cases"
    # The protocol-level groups (ping/pong, reserved bits and opcodes, fragmentation rules, invalid
    # UTF-8, close codes) end with the close kosoku requires. Whether the text sent just before a
    # protocol error is echoed first is a race the cases allow ("OK" or "NON-STRICT").
    for group in ("2.", "3.", "4.", "5.15", "6.3.", "6.4.", "6.8.", "6.10.", "6.12.", "6.20.", "7.3.", "7.7.", "7.9."):
        in_group = [case_id for case_id in cases if case_id.startswith(group)]
        assert in_group, group
        for case_id in in_group:
            assert classes[case_id] in ("strict", "envelope"), case_id
            assert cases[case_id]["behaviorClose"] in PASSING, (case_id, cases[case_id]["resultClose"])
    # The service stayed healthy.
    log = server.log()
    assert "Traceback" not in log, log[log.find("Traceback") : log.find("Traceback") + 3000]
