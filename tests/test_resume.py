"""A long run killed mid-way and rerun ends with every post exactly once (real process, real SIGKILL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mentalglm.data.readers import read_posts
from models import kill_when


@pytest.mark.parametrize("parallel, batch, written", [
    (1, 1, 5),  # one post at a time
    (8, 8, 8),  # killed while the next 8 posts are in flight in 8 sequences: they are lost, none written twice
])
def test_killed_run_resumes_without_loss_or_duplicates(exported, tmp_path, parallel, batch, written):
    out = tmp_path / "predictions.jsonl"
    args = [sys.executable, "-m", "mentalglm", "analyze", "--task", "depression", "--backend", "llamacpp",
            "--model", str(exported("glm", "q8_0")), "--input", "sample:depression", "--output", str(out),
            "--option", "n_ctx=1024", "--option", "max_new_tokens=48", "--option", f"parallel={parallel}",
            "--batch-size", str(batch), "--quiet"]
    env = {**os.environ, "MENTALGLM_LOAD_PLUGINS": ""}
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(process, lambda: out.exists() and out.read_text(encoding="utf-8").count("\n") >= written)
    written_before = out.read_text(encoding="utf-8").count("\n")
    total = len(read_posts("sample:depression"))
    assert written <= written_before < total

    rerun = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] == written_before and summary["analysed"] == total - written_before
    ids = [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(ids) == total and len(set(ids)) == total
    assert set(ids) == {p.id for p in read_posts("sample:depression")}
