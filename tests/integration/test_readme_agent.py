"""The README's agent examples (tools, streaming) run as written against the test stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Agent traffic"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_the_tool_and_streaming_examples():
    blocks = examples()
    assert len(blocks) == 2 and "tools=[WEATHER]" in blocks[0] and "c.stream(" in blocks[1]


@pytest.mark.parametrize("index, expect", [(0, "sunny in Paris"), (1, "chunks, first after")])
def test_a_readme_agent_example_runs(stack, index, expect, tmp_path):
    script = tmp_path / f"example_{index}.py"
    script.write_text(examples()[index])
    env = {**os.environ, "PANELBOARD_NATS_URL": stack.nats_url}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert expect in run.stdout
