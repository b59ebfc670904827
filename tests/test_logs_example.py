"""``datasets/logs_example.yaml`` runs as documented from a fresh clone: its generated
sample is committed and is what ``datasets/make_logs_example.py`` writes, and the two
documented commands (prepare, then train quickstart on it) succeed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from intentrec.cli import main
from intentrec.config import REPO_ROOT
from intentrec.data.recipes.logs import load_logs
from intentrec.data.validate import validate_tables
from tests.conftest import TINY_RUN

EXAMPLE = "datasets/logs_example.yaml"  # as the docs write it, relative to the repository


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_logs_example", REPO_ROOT / "datasets" / "make_logs_example.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sample_is_what_the_script_writes(tmp_path: Path) -> None:
    written = _generator().write(tmp_path)
    assert [p.name for p in written] == ["events.csv", "products.csv"]
    for path in written:
        committed = REPO_ROOT / "datasets" / "logs_example" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"rerun datasets/make_logs_example.py ({path.name})"
        )


def test_example_mapping_reads_the_sample() -> None:
    raw = validate_tables(load_logs(str(REPO_ROOT / EXAMPLE)), "example")
    assert raw.name == "shop-example"
    assert raw.events.height == 390 and raw.events["user_id"].n_unique() == 30
    assert raw.events.row(0) == ("C01", "P026", 1_709_488_800, "view", 44.0, "web")
    assert raw.items.row(0) == ("P001", 1_686_787_200, "101", [], 33.1, "hooli")
    assert raw.items.columns == ["item_id", "release_ts", "category", "tags", "price", "brand"]
    assert raw.intents == ["action_type", "category", "release_bucket"]
    assert raw.weight_column == "duration"


def test_documented_commands_run(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    assert (
        main(["data", "prepare", "logs", "--path", EXAMPLE, "--out", str(tmp_path / "cache")]) == 0
    )
    out = capsys.readouterr().out
    assert "size         30 users  59 items  390 events" in out
    assert "intent       category (single, 8 classes)" in out
    assert "intent       action_type (single, 4 classes)" in out
    assert "tags(multi)" in out and "category(categ)" in out and "price(numer)" in out
    # The documented train command, one epoch of tiny models, written under tmp_path.
    code = main(
        [
            "train", "quickstart", "data=logs", f"data.path={EXAMPLE}", "experiment=logs_example",
            cache, f"out_dir={tmp_path / 'runs'}", *TINY_RUN, "trainer.max_epochs=1",
        ]
    )  # fmt: skip
    assert code == 0
    runs = tmp_path / "runs" / "logs_example"
    assert (runs / "summary.md").is_file()
    for variant in ("SASRec", "IntentRec_V3"):
        metrics = json.loads((runs / variant / "seed0" / "metrics.json").read_text())
        assert 0.0 <= metrics["test/item/ndcg@10"] <= 1.0
    intent = json.loads((runs / "IntentRec_V3" / "seed0" / "metrics.json").read_text())
    assert "test/intent/category/accuracy" in intent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (["NAME=logs", f"MAPPING={EXAMPLE}"], f'data prepare logs --path "{EXAMPLE}"'),
        (
            ["NAME=movielens", "DATA_PATH=/data/ml-1m"],
            'data prepare movielens --path "/data/ml-1m"',
        ),
        ([], "data prepare synthetic"),
    ],
)
def test_make_data_passes_the_mapping(variables: list[str], expected: str) -> None:
    # -n: print the commands, run nothing; the .installed stamp keeps `install` quiet.
    result = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "data", *variables],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    command = [line for line in result.stdout.splitlines() if "intentrec data prepare" in line]
    assert len(command) == 1 and command[0].rstrip().endswith(expected), result.stdout
