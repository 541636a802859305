"""The executor's protocol pieces that need no guest: frames cut from a stream however it
arrives, replies that are JSON for any text, which commands run without a shell, and the
bootstrap that starts the executor from a ``python3 -c`` (run here with this host's
python3, over pipes, as sshd would)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from harness.ssh.executor import BOOTSTRAP, EXECUTOR_BYTES
from harness.ssh.executor_wire import (
    Frames,
    encode_reply,
    encode_request,
    frame,
    plain_argv,
)


def test_frames_are_cut_whatever_the_chunks() -> None:
    stream = b"".join(frame(i, encode_request({"op": "run", "shell": f"echo {i}"}), b"x" * i)
                      for i in range(1, 40))
    for size in (1, 7, 4096):
        frames, got = Frames(), []
        for k in range(0, len(stream), size):
            got += frames.feed(stream[k:k + size])
        assert [(rid, meta["shell"], len(p)) for rid, meta, p in got] == [
            (i, f"echo {i}", i) for i in range(1, 40)]
        assert frames.buf == bytearray()


def test_a_stream_that_is_not_frames_is_refused() -> None:
    with pytest.raises(ValueError, match="magic"):
        Frames().feed(b"bash: python3: command not found\n")


@pytest.mark.parametrize("text", ['"', "\\", "tab\there", "nl\n", "é ✓", "\x00\x1f\x7f", ""])
def test_replies_are_json_for_any_text(text: str) -> None:
    meta = {"error": text, "status": -3, "dropped": [0, 12], "timed_out": True, "x": None}
    assert json.loads(encode_reply(meta)) == meta


@pytest.mark.parametrize(("command", "shell"), [
    ("true", False), ("ls -la /tmp", False), ("sleep 0.5", False),
    ("echo $HOME", True), ("a | b", True), ("x=1 env", True), ("cd /tmp", True),
    ("ls *", True), ("echo 'q'", True), ("true  ", True), ("nosuchprogram-x", True),
    ("cat ~/f", True), ("", True),
])
def test_only_plain_words_skip_the_shell(command: str, shell: bool) -> None:
    argv = plain_argv(command, os.environ["PATH"])
    assert (argv is None) == shell
    if argv is not None:
        assert os.path.isabs(argv[0]) and argv[1:] == command.split(" ")[1:]


@pytest.mark.parametrize("compiled_here", [True, False])
def test_the_bootstrap_starts_the_executor_from_its_bytes(compiled_here: bool) -> None:
    """What sshd runs for a session, with this host's python3 in place of the guest's;
    as a guest with other bytecode would (another cache_tag: it compiles the sources)."""
    tag = sys.implementation.cache_tag
    command = BOOTSTRAP.replace("python3", sys.executable, 1)
    if not compiled_here:
        assert f'=="{tag}"' in command
        command = command.replace(f'=="{tag}"', '=="cpython-00"')
    proc = subprocess.Popen(["/bin/sh", "-c", command],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    request = encode_request({"op": "run", "shell": "echo hi >&2; exit 3"})
    proc.stdin.write(EXECUTOR_BYTES + frame(7, request))
    proc.stdin.flush()
    frames = Frames(json.loads)
    got: list[tuple[int, dict[str, Any], bytes]] = []
    while len(got) < 2:
        got += frames.feed(os.read(proc.stdout.fileno(), 65536))
    (hello_id, hello, _), (rid, meta, payload) = got
    assert hello_id == 0 and hello["hello"] == 1 and hello["pid"] > 0
    assert (rid, meta["status"], meta["out"], payload) == (7, 3, 0, b"hi\n")
    proc.stdin.close()  # the client hangs up: the executor exits
    assert proc.wait(timeout=10) == 0
