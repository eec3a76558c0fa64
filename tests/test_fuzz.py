"""The surfaces that take outside input, fed a thousand malformed inputs each (seeded, so every run feeds the
same ones): task files, data files, model registries and the service's requests. Each input is either read or
refused with mentalglm's one-line error (an HTTP 4xx for the service) — never another exception, never a 5xx."""

from __future__ import annotations

import json
import random

import pytest

from mentalglm.core.errors import MentalGLMError

CASES = 1000
#: What mutations insert: the characters that carry structure in YAML, TOML, JSON and CSV, and some that break text.
STRUCTURE = list(':{}[],"\'\n\t -#=|&*!%@`\\') + ["\x00", "\ufeff", "\ud800"[:0] + "\x85", "é", "抑郁", "0", "1e999",
                                                    "null", "true", "- ", ": ", "\r\n", "'''", '"""']


def mutations(text: str, seed: int, cases: int = CASES):
    """``cases`` variants of ``text``: spans deleted, structure inserted, lines repeated or swapped."""
    rng = random.Random(seed)
    for _ in range(cases):
        out = text
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.35 and out:
                start = rng.randrange(len(out))
                out = out[:start] + out[start + rng.randint(1, 12):]
            elif kind < 0.8:
                at = rng.randrange(len(out) + 1)
                out = out[:at] + "".join(rng.choice(STRUCTURE) for _ in range(rng.randint(1, 4))) + out[at:]
            else:
                lines = out.split("\n")
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                if rng.random() < 0.5:
                    lines.insert(j, lines[i])
                else:
                    lines[i], lines[j] = lines[j], lines[i]
                out = "\n".join(lines)
        yield out


TASK_YAML = """name: stress
kind: single-label
description: Is the poster under acute stress?
instruction: |-
  判断下面这条帖子的发帖者是否处于急性压力之下。请按以下格式回答：
  标签：有压力 或 无压力
  解释：说明你的判断依据。
labels:
  - name: 有压力
    aliases: [stressed]
  - 无压力
primary_metric: weighted_f1
"""


def test_task_files(tmp_path):
    from mentalglm.core.taskfile import load_task_file

    read = refused = 0
    for i, text in enumerate(mutations(TASK_YAML, seed=1)):
        path = tmp_path / f"task{i % 7}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_task_file(path)
            read += 1
        except MentalGLMError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            refused += 1
    assert read + refused == CASES and refused > CASES // 4


DATA = {
    "posts.jsonl": "".join(json.dumps({"id": f"p{i}", "text": t, "label": label}, ensure_ascii=False) + "\n"
                           for i, (t, label) in enumerate([("最近总是失眠", "抑郁"), ("今天很开心", "非抑郁"),
                                                           ("什么都不想做", "抑郁")])),
    "posts.csv": "id,text,label\np1,最近总是失眠,抑郁\np2,\"今天, 很开心\",非抑郁\np3,什么都不想做,抑郁\n",
    "posts.tsv": "text\tlabel\n最近总是失眠\t抑郁\n今天很开心\t非抑郁\n",
    "records.json": json.dumps([{"instruction": "判断。", "input": "好累", "output": "标签：抑郁\n解释：累。"},
                                {"instruction": "判断。", "input": "很好", "output": "标签：非抑郁\n解释：好。"}],
                               ensure_ascii=False),
}


@pytest.mark.parametrize("name", list(DATA))
def test_data_files(tmp_path, pm, name):
    from mentalglm.data.readers import read_posts

    task = pm.task("depression")
    read = refused = 0
    for i, text in enumerate(mutations(DATA[name], seed=2, cases=CASES // 4)):
        path = tmp_path / f"{i % 5}-{name}"
        encoding = "gbk" if i % 9 == 0 else "utf-8"
        path.write_bytes(text.encode(encoding, errors="replace") + (bytes([0xff, 0xfe, 0x80]) if i % 13 == 0 else b""))
        try:
            read_posts(path, task)
            read += 1
        except MentalGLMError as exc:
            assert "\n" not in str(exc).strip() and str(path) in str(exc)
            refused += 1
    assert read + refused == CASES // 4


REGISTRY = """reference: floor
models:
  - name: floor
    backend: baseline
    model: {suicide-risk: models/floor}
  - name: chat
    backend: llamacpp
    model: models/m.gguf
    prompt: auto
    options: {n_ctx: 2048, parallel: 4}
  - name: served
    backend: openai
    model: qwen2.5
    options: {base_url: "http://127.0.0.1:8000/v1"}
"""


def test_model_registries(tmp_path, pm):
    from mentalglm.evaluation.registry import load_registry

    read = refused = 0
    for i, text in enumerate(mutations(REGISTRY, seed=3)):
        path = tmp_path / f"models{i % 7}.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_registry(path, plugins=pm)
            read += 1
        except MentalGLMError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
            refused += 1
    assert read + refused == CASES and refused > CASES // 4


def _bodies(seed: int):
    """Malformed and odd request bodies: mutated JSON text, and well-formed JSON of the wrong shapes."""
    rng = random.Random(seed)
    valid = [json.dumps({"task": "suicide-risk", "posts": ["好累", {"id": "b", "text": "想死"}], "explain": False},
                        ensure_ascii=False),
             json.dumps({"input": ["好累", "想死"], "model": "m"}, ensure_ascii=False)]
    values = [None, True, 0, -1, 1.5, "", "x", [], {}, [None], [{}], ["好"] * 70, "好" * 5000, {"id": 1},
              [{"id": None, "text": "x"}], [{"id": "a", "text": 5}], {"text": "x"}]
    texts = list(mutations(valid[0], seed=seed, cases=CASES // 2)) + list(mutations(valid[1], seed=seed + 1,
                                                                                 cases=CASES // 4))
    for text in texts:
        yield ("/v1/analyze" if '"task"' in text or "posts" in text else "/v1/moderations"), text.encode(
            "utf-8", errors="replace")
    for _ in range(CASES - len(texts)):
        route = rng.choice(["/v1/analyze", "/v1/moderations"])
        keys = ["task", "posts", "explain"] if route == "/v1/analyze" else ["input", "model"]
        body = {key: rng.choice(values) for key in keys if rng.random() < 0.8}
        yield route, json.dumps(body, ensure_ascii=False).encode()


def test_service_requests(tmp_path):
    pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
    import http.client

    from served import build_floor, serve

    floor = build_floor(tmp_path)
    statuses: dict[int, int] = {}
    with serve(floor, max_posts=64, max_chars=4000) as served:
        served.wait_ready()
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        for route, body in _bodies(seed=4):
            connection.request("POST", route, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            statuses[response.status] = statuses.get(response.status, 0) + 1
            assert response.status < 500, (route, body[:200], payload)
            if response.status != 200:
                assert payload["error"]["message"] and "Traceback" not in payload["error"]["message"]
        connection.close()
        _, _, health = served.call("GET", "/health")
    assert sum(statuses.values()) == CASES and statuses.get(422, 0) > CASES // 4 and statuses.get(200, 0) > 0
    assert health["status"] == "ok"
