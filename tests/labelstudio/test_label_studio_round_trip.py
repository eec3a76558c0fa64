"""The expert-review round trip through a real Label Studio on loopback.

Label Studio pins its own Django and friends, so it lives in a virtual environment of its own
and these tests run only when ``MENTALGLM_LABEL_STUDIO`` names that environment's
``label-studio`` script; ``.ci/label-studio.sh`` builds it (``pip install label-studio``) and
runs ``pytest -m labelstudio tests/labelstudio``.

The server gets a fresh data folder (SQLite), an admin user with a legacy API token and sign-up
closed, all through ``LABEL_STUDIO_*`` variables; its version check, analytics and error
reporting are off, so nothing but loopback is contacted. A project is made through the REST API
with the labelling config ``review export`` wrote, the tasks are imported, three reviewers
(two made through the API) submit annotations, one is cancelled, the project is exported as
JSON through the API, and ``review import`` + ``review stats`` must account for every task,
every annotation and every rating.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request

import pytest
from alpha_by_hand import alpha_by_hand

from conftest import free_port, wait_until_serving
from mentalglm.cli import main
from mentalglm.core.plugin_manager import get_plugin_manager
from mentalglm.data.readers import iter_records, read_posts
from mentalglm.review.agreement import review_stats
from mentalglm.review.gold import read_reviews
from mentalglm.review.label_studio import DIMENSIONS

LABEL_STUDIO = os.environ.get("MENTALGLM_LABEL_STUDIO", "")
pytestmark = [
    pytest.mark.labelstudio,
    pytest.mark.skipif(not LABEL_STUDIO, reason="set MENTALGLM_LABEL_STUDIO to the label-studio script of a Label "
                                                "Studio environment (.ci/label-studio.sh builds .venv-labelstudio)"),
]
#: A fresh data folder is migrated on start: ~60 s on 2 shared cores; far more means it hangs.
START_TIMEOUT_S = 420
TOKEN = "mentalglm-test-token-0123456789"
LABELS = ["高自杀风险", "低自杀风险"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


class LabelStudio:
    """The REST API of the server under test, as the admin user (legacy token)."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def call(self, method: str, path: str, body=None):
        request = urllib.request.Request(
            self.base_url + path, method=method, data=None if body is None else json.dumps(body).encode("utf-8"),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=120) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            pytest.fail(f"{method} {path}: HTTP {exc.code}: {exc.read()[:1000]!r}")
        return json.loads(payload) if payload else None


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A running Label Studio (fresh data folder, admin with a known token), stopped with its process group."""
    root = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ,
           "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
           "LABEL_STUDIO_USERNAME": "admin@example.com", "LABEL_STUDIO_PASSWORD": "admin-password-123",
           "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
           # nothing leaves loopback: no PyPI version check, no analytics, no Sentry
           "LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    command = [LABEL_STUDIO, "start", "--no-browser", "--port", str(port), "--host", base_url,
               "--internal-host", "127.0.0.1", "--data-dir", str(root / "data"), "--enable-legacy-api-token"]
    log_path = root / "label-studio.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_serving(process, base_url, log_path, "Label Studio", timeout=START_TIMEOUT_S, poll=1,
                           probe="/health")
        yield LabelStudio(base_url)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``review export`` of a replay run of the synthetic suicide-risk sample, with probabilities and evidence added."""
    root = tmp_path_factory.mktemp("review")
    run = root / "run"
    assert main(["evaluate", "--task", "suicide-risk", "--backend", "replay", "--model",
                 "sample:suicide-risk.outputs", "--data", "sample:suicide-risk", "--output-dir", str(run),
                 "--quiet", "--bootstrap", "0"]) == 0
    texts = {p.id: p.text for p in read_posts("sample:suicide-risk")}
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    for index, row in enumerate(rows):  # what calibration and grounding add to a row
        high = round(0.05 + 0.9 * ((index * 37) % 100) / 100, 4)
        row["probabilities"], row["needs_review"] = {"高自杀风险": high, "低自杀风险": round(1 - high, 4)}, False
        text = texts[row["id"]]
        if index % 3 == 0 and len(text) >= 4:
            row["evidence"] = [{"quote": text[1:4], "start": 1, "end": 4, "grounded": True},
                               {"quote": "不在帖子里的话", "start": None, "end": None, "grounded": False}]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
    tasks_path = root / "tasks.json"
    assert main(["review", "export", str(run), "--to", "label-studio", "-o", str(tasks_path)]) == 0
    return {"root": root, "run": run, "tasks": json.loads(tasks_path.read_text(encoding="utf-8")),
            "config": (root / "tasks.label_config.xml").read_text(encoding="utf-8")}


def _all_tasks(server: LabelStudio, project: int) -> list[dict]:
    tasks, page = [], 1
    while True:
        batch = server.call("GET", f"/api/tasks?project={project}&page={page}&page_size=100")
        tasks += batch["tasks"]
        if len(tasks) >= batch["total"] or not batch["tasks"]:
            return tasks
        page += 1


def _result(data: dict, label: str, ratings: list[int], explanation: str | None, evidence: list[dict]) -> list:
    result = [{"from_name": "label", "to_name": "post", "type": "choices", "value": {"choices": [label]}}]
    result += [{"from_name": name, "to_name": "explanation", "type": "rating", "value": {"rating": value}}
               for name, value in zip(DIMENSIONS, ratings)]
    if explanation is not None:
        result.append({"from_name": "explanation_corrected", "to_name": "post", "type": "textarea",
                       "value": {"text": [explanation]}})
    for number, span in enumerate(evidence):
        result.append({"id": f"e{number}", "from_name": "evidence", "to_name": "post", "type": "labels",
                       "value": {"start": span["start"], "end": span["end"], "text": data["text"][span["start"]:
                                                                                                 span["end"]],
                                 "labels": ["依据"]}})
    return result


def test_round_trip_through_label_studio_loses_nothing(label_studio, exported, tmp_path, capsys):
    server, tasks = label_studio, exported["tasks"]
    project = server.call("POST", "/api/projects", {"title": "mentalglm review", "label_config": exported["config"]})
    imported = server.call("POST", f"/api/projects/{project['id']}/import", tasks)
    assert imported["task_count"] == len(tasks) and imported["prediction_count"] == len(tasks)

    stored = _all_tasks(server, project["id"])
    assert [t["data"]["post_id"] for t in sorted(stored, key=lambda t: t["id"])] == [
        t["data"]["post_id"] for t in tasks]  # Label Studio's order is the review order
    with_evidence = next(t for t in stored if t["data"]["evidence"])
    prediction = server.call("GET", f"/api/predictions?task={with_evidence['id']}")[0]
    kinds = {r["from_name"]: r for r in prediction["result"]}
    assert kinds["label"]["value"]["choices"] == with_evidence["data"]["model_labels"]
    span = kinds["evidence"]["value"]
    assert with_evidence["data"]["text"][span["start"]:span["end"]] == span["text"]

    reviewers = [server.call("GET", "/api/current-user/whoami")["id"]]
    for name in ("reviewer-b", "reviewer-c"):
        reviewers.append(server.call("POST", "/api/users/", {"email": f"{name}@example.com", "username": name,
                                                             "first_name": name, "last_name": "test"})["id"])
    submitted: dict[tuple[str, str], dict] = {}
    cancelled = 0
    for index, task in enumerate(sorted(stored, key=lambda t: t["id"])):
        data = task["data"]
        model = data["model_labels"][0] if data["model_labels"] else LABELS[1]
        for position, user in enumerate(reviewers):
            if position == 2 and index >= 20:
                continue  # the third reviewer saw only the first 20 posts: missing data for α
            if position == 2 and index == 5:
                server.call("POST", f"/api/tasks/{task['id']}/annotations/",
                            {"result": [], "was_cancelled": True, "completed_by": user})
                cancelled += 1
                continue
            flip = (position == 1 and index % 4 == 0) or (position == 2 and index % 5 == 0)
            label = LABELS[1 - LABELS.index(model)] if flip else model
            ratings = [1 + (index + position + k) % 5 for k in range(len(DIMENSIONS))]
            explanation = f"审核者 {position} 改写的解释" if position == 1 and index % 7 == 0 else None
            evidence = data["evidence"] if position == 0 else []
            body = {"result": _result(data, label, ratings, explanation, evidence), "completed_by": user}
            created = server.call("POST", f"/api/tasks/{task['id']}/annotations/", body)
            submitted[(data["post_id"], f"user {user}")] = {"label": label, "ratings": ratings,
                                                            "explanation": explanation,
                                                            "evidence": [(e["start"], e["end"]) for e in evidence],
                                                            "annotation_id": created["id"]}

    export = server.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true")
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")

    reviewed, train = tmp_path / "reviewed.jsonl", tmp_path / "train.jsonl"
    assert main(["review", "import", str(export_path), "-o", str(reviewed), "--records", str(train)]) == 0
    records = [json.loads(line) for line in reviewed.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(submitted) and any(sent["evidence"] for sent in submitted.values())
    assert {r["post_id"] for r in records} == {t["data"]["post_id"] for t in tasks}  # every task
    for record in records:  # every annotation, every rating
        sent = submitted[(record["post_id"], record["reviewer"])]
        assert record["annotation_id"] == sent["annotation_id"]
        assert record["labels"] == [sent["label"]] and not record["unknown_labels"]
        assert [record["ratings"][name] for name in DIMENSIONS] == sent["ratings"]
        assert [(e["start"], e["end"]) for e in record["evidence"]] == sent["evidence"]
        if sent["explanation"] is not None:
            assert record["explanation"] == sent["explanation"] and record["explanation_edited"]

    document = review_stats(read_reviews(reviewed), resamples=200)
    assert document["reviews"] == len(submitted) and document["posts"] == len(tasks)
    assert document["reviewers"] == sorted(f"user {u}" for u in reviewers) and document["duplicates"] == 0
    for name in DIMENSIONS:  # α of what was sent, counted by hand from the coincidence matrix
        units: dict[str, dict[str, int]] = {}
        for (post_id, reviewer), sent in submitted.items():
            units.setdefault(post_id, {})[reviewer] = sent["ratings"][list(DIMENSIONS).index(name)]
        assert document["agreement"][name]["krippendorff_alpha"] == pytest.approx(
            alpha_by_hand(units, "ordinal", [1, 2, 3, 4, 5]), abs=1e-9)
        values = [sent["ratings"][list(DIMENSIONS).index(name)] for sent in submitted.values()]
        assert document["ratings"][name]["mean"] == pytest.approx(sum(values) / len(values))
        assert document["ratings"][name]["ratings"] == len(values)
    assert document["model_vs_expert"]["posts"] + len(document["model_vs_expert"]["ties"]) == len(tasks)
    training = list(iter_records(train, get_plugin_manager().task("suicide-risk")))
    assert len(training) == document["model_vs_expert"]["posts"]  # one corrected record per decided post

    capsys.readouterr()
    assert main(["review", "import", str(export_path), "-o", str(tmp_path / "again.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # what was skipped is counted, not lost
    assert summary["cancelled"] == cancelled == 1 and summary["tasks"] == len(tasks)
    assert summary["annotations"] == summary["records"] == len(submitted)
    assert summary["tasks_without_annotations"] == 0 and summary["unknown_labels"] == []
    assert main(["review", "stats", str(reviewed), "--predictions", str(exported["run"])]) == 0
    assert "model vs. experts' majority" in capsys.readouterr().out
