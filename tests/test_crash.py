"""kill -9 a real `latentbeam score` / `latentbeam stream` at chosen and random points.

After the kill, an output that looks complete (`_SUCCESS` for score, a manifest entry
for the stream) must be whole; a rerun (`--overwrite`) or restart must then complete
with every input row in OUT exactly once and no staging left.
LATENTBEAM_CRASH_SEEDS=N runs N random-time kills of each command and every commit and
stream step (default: 1 and the steps that matter most, to keep `make test` short).
"""
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from latentbeam import outputs
from latentbeam.cli import main
from latentbeam.demo import digits_table

pytestmark = pytest.mark.filterwarnings("ignore")

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_runner.py")
SEEDS = int(os.environ.get("LATENTBEAM_CRASH_SEEDS", "1"))
LONG = SEEDS > 1
FILES, ROWS = 4, 100
ALL_IDS = list(range(FILES * ROWS))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash") / "in"
    d.mkdir()
    for i in range(FILES):
        pq.write_table(digits_table().slice(i * ROWS, ROWS), d / f"f{i}.parquet")
    return str(d)


def run_and_kill(argv, *, step=None, delay=None, timeout=90):
    """Starts crash_runner with argv; kills its process group at STEP `step` or after `delay` s.

    Returns the STEP lines printed before the kill (or the whole run's, if it ended first).
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CRASH_STEP=str(step or 0))
    proc = subprocess.Popen([sys.executable, RUNNER, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen = []
    deadline = time.time() + (delay if delay is not None else timeout)
    while time.time() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=0.05).strip()
        except queue.Empty:
            continue
        seen.append(line)
        if step is not None and line.startswith(f"STEP {step} "):
            time.sleep(0.2)  # the runner is asleep in the step now
            break
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    while not lines.empty():
        seen.append(lines.get().strip())
    return seen


def ids_in(out):
    return sorted(pd.read_parquet(out, columns=["id"])["id"].tolist())


def complete_ids(out):
    """The ids of OUT if it looks complete (_SUCCESS), after checking it is whole; else None.

    Whole: every file _SUCCESS lists exists, readers of OUT see exactly those files' rows,
    each once, as many as _SUCCESS counts.
    """
    success = os.path.join(out, "_SUCCESS")
    if not os.path.exists(success):
        return None
    doc = json.load(open(success))
    for name in doc["files"] + doc["dead_letter_files"]:
        assert os.path.exists(os.path.join(out, name)), name
    listed = sorted(i for name in doc["files"]
                    for i in pq.read_table(os.path.join(out, name)).column("id").to_pylist())
    assert ids_in(out) == listed
    assert len(listed) == len(set(listed)) == doc["rows_scored"]
    return listed


def assert_clean(out):
    left = [rel for rel in outputs.list_tree(out)  # an empty _temp/ holds nothing
            if (outputs.is_staging(rel) and not rel.endswith("/"))
            or rel == outputs.COMMITTING_FILE]
    assert left == []


def score_argv(tiny_bundle_dir, inputs, out, pattern="*.parquet"):
    return ["score", "--bundle", tiny_bundle_dir, "--input", os.path.join(inputs, pattern),
            "--output", out, "--key-columns", "id", "--overwrite"]


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 6] if LONG else [2, 3, 4, 5])
def test_score_killed_at_each_step_of_the_commit(tmp_path, inputs, tiny_bundle_dir, step):
    out = str(tmp_path / "out")
    # An earlier complete output (files 0-1) that the killed run is replacing.
    assert main(score_argv(tiny_bundle_dir, inputs, out, "f[01].parquet")) == 0
    seen = run_and_kill(score_argv(tiny_bundle_dir, inputs, out), step=step)
    names = [line.split()[2] for line in seen if line.startswith("STEP")]
    # _COMMITTING, old files out, new files in, _SUCCESS, _COMMITTING out, staging out.
    assert names == ["write", "delete", "rename", "write", "delete", "remove_staging"][:step]
    # Steps 1-2: the old output is still whole; 3-4: old shards half gone, new ones half
    # in, and nothing claims completeness; 5-6: the new output is whole.
    expected = {1: ALL_IDS[:200], 2: ALL_IDS[:200], 3: None, 4: None, 5: ALL_IDS, 6: ALL_IDS}
    assert complete_ids(out) == expected[step]
    if expected[step] is None:
        assert outputs.COMMITTING_FILE in os.listdir(out)
    assert main(score_argv(tiny_bundle_dir, inputs, out)) == 0
    assert complete_ids(out) == ALL_IDS
    assert_clean(out)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_score_killed_at_a_random_time(tmp_path, inputs, tiny_bundle_dir, seed):
    out = str(tmp_path / "out")
    delay = random.Random(seed).uniform(2.0, 9.0)
    run_and_kill(score_argv(tiny_bundle_dir, inputs, out), delay=delay)
    assert complete_ids(out) in (None, ALL_IDS)
    assert main(score_argv(tiny_bundle_dir, inputs, out)) == 0
    assert complete_ids(out) == ALL_IDS
    assert_clean(out)


def stream_argv(tiny_bundle_dir, inputs, out, seconds):
    return ["stream", "--bundle", tiny_bundle_dir, "--watch", inputs, "--output", out,
            "--window-seconds", "3600", "--poll-seconds", "0.3", "--stop-after-seconds",
            str(seconds), "--key-columns", "id", "--batch-rows", "40"]


def assert_manifest_entries_are_whole(out):
    """Every source in the manifest has all its rows on disk, in the files it lists."""
    entries = [json.load(open(os.path.join(out, "_manifest", f)))
               for f in os.listdir(os.path.join(out, "_manifest"))] \
        if os.path.isdir(os.path.join(out, "_manifest")) else []
    for e in entries:
        rows = sum(pq.read_table(p).num_rows for p in e["outputs"] if p.endswith(".parquet"))
        assert rows == e["scored"] == ROWS
    return len(entries)


@pytest.mark.parametrize("kill", [f"step-{k}" for k in (range(1, 9) if LONG else (2, 5))] +
                         [f"seed-{s}" for s in range(SEEDS)])
def test_stream_killed_then_restarted_scores_every_row_exactly_once(tmp_path, inputs,
                                                                     tiny_bundle_dir, kill):
    out = str(tmp_path / "out")
    if kill.startswith("step"):
        # Per file: rename (publish), then write (manifest). Step 2: the first file's
        # manifest about to be written; 5: the third file about to be published.
        run_and_kill(stream_argv(tiny_bundle_dir, inputs, out, 60), step=int(kill[5:]))
    else:
        run_and_kill(stream_argv(tiny_bundle_dir, inputs, out, 60),
                     delay=random.Random(int(kill[5:])).uniform(3.0, 10.0))
    done_before = assert_manifest_entries_are_whole(out)
    assert main(stream_argv(tiny_bundle_dir, inputs, out, 2.5)) == 0
    assert assert_manifest_entries_are_whole(out) == FILES >= done_before
    assert ids_in(out) == ALL_IDS  # every row exactly once
    assert_clean(out)
