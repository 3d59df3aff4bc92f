# SPDX-License-Identifier: Apache-2.0
"""Tests of scripts/distributed_extract.py: `dinov2 extract` over WebDataset shards on Ray.

The fast tests (brace expansion, shard names, refused engines) need neither Ray nor the tool.
The end-to-end test starts a local Ray cluster of 2 workers on 20 generated .tar shards (three
of their images corrupt), SIGKILLs the Ray worker running one shard once that shard has written a
part, and checks that the job still completes: the extract process dies with its worker
(PR_SET_PDEATHSIG), the task is retried, the retry resumes from the parts, `dinov2 verify` finds
every image exactly once, a second run only checks, and the merged outputs equal, row for row
and bit for bit, one `dinov2 extract` process over all the shards (both with --batch 1 and
--threads 1, so that no batch composition or thread count can change the float32 rounding).

The tool is looked up as `$DINOV2_BUILD_DIR/bin/dinov2` (DINOV2_BUILD_DIR defaults to
`<repo>/build`); the end-to-end test is skipped, saying so, without it or without Ray.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DINOV2_BUILD_DIR", REPO / "build"))
TOOL = BUILD / "bin" / "dinov2"
SCRIPT = REPO / "scripts" / "distributed_extract.py"

SHARDS = 20
SLOW = 0  # the shard whose worker is killed: it has SLOW_IMAGES images, so it can be caught
SLOW_IMAGES = 60
CORRUPT = {3: "random", 7: "truncated_png", 12: "truncated_jpeg"}  # shard -> its bad member


def load_script():
    spec = importlib.util.spec_from_file_location("distributed_extract", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def run_tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(TOOL), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


# ---------------------------------------------------------------------------------------------
# Fast tests: no Ray, no tool


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("data/{00000..00003}.tar", [f"data/{i:05d}.tar" for i in range(4)]),
        ("{8..11}", ["8", "9", "10", "11"]),
        ("{09..11}", ["09", "10", "11"]),
        ("{3..1}", ["3", "2", "1"]),
        ("{a,b}{1..2}", ["a1", "a2", "b1", "b2"]),
        ("x{a,{b,c}}y", ["xay", "xby", "xcy"]),
        ("s/{train,val}/*.tar", ["s/train/*.tar", "s/val/*.tar"]),
        ("{x}", ["{x}"]),
        ("a{b", ["a{b"]),
        ("{x}{1..2}", ["{x}1", "{x}2"]),
        ("plain.tar", ["plain.tar"]),
    ],
)
def test_brace_expansion(pattern, expected):
    assert load_script().expand_braces(pattern) == expected


def test_inputs_are_globbed_sorted_deduplicated_and_a_missing_one_is_an_error(
    tmp_path, monkeypatch
):
    script = load_script()
    (tmp_path / "d").mkdir()
    for name in ("b.tar", "a.tar", "c.tar"):
        (tmp_path / "d" / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert script.resolve_inputs(["d/{b,a}.tar", "d/*.tar", "./d/a.tar"]) == [
        "d/a.tar",
        "d/b.tar",
        "d/c.tar",
    ]
    with pytest.raises(script.UsageError, match="d/z.tar"):
        script.resolve_inputs(["d/{a,z}.tar"])


def test_two_shards_with_one_name_are_refused(tmp_path):
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.tar").write_bytes(b"")
    r = run_script(
        "--inputs", "{one,two}/x.tar", "--model", "m.pt", "--output", "out", "--dry-run",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "one/x.tar" in r.stderr and "two/x.tar" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_one_command_per_shard_and_the_check(tmp_path):
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"{i:05d}.tar").write_bytes(b"")
    tool = tmp_path / "bin" / "dinov2"  # any executable file: a dry run does not start it
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 1\n")
    tool.chmod(0o755)
    r = run_script(
        "--inputs", "data/{00000..00002}.tar", "--model", "m.pt", "--output", "out",
        "--dinov2", tool, "--threads-per-task", "2", "--dry-run",
        "--", "--recipe", "eval224",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    for i in range(3):
        assert lines[i] == (
            f"{tool} extract --model m.pt --output out/{i:05d}.safetensors --resume "
            f"--threads 2 --recipe eval224 data/{i:05d}.tar"
        )
    assert lines[3] == (
        f"{tool} verify --features out " + " ".join(f"data/{i:05d}.tar" for i in range(3))
    )


def test_spark_and_reserved_options_are_refused(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    base = ["--inputs", "a.tar", "--model", "m.pt", "--output", "out"]
    r = run_script("--engine", "spark", *base, cwd=tmp_path)
    assert r.returncode == 2 and "spark is not supported" in r.stderr, r.stderr
    assert "docs/SCALE.md" in r.stderr
    r = run_script(*base, "--dry-run", "--", "-o", "x.safetensors", cwd=tmp_path)
    assert r.returncode == 2 and "-o" in r.stderr, r.stderr
    r = run_script("--inputs", "absent/{0..3}.tar", *base[2:], "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "absent/0.tar" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# End to end on a local Ray cluster


def image_bytes(rng: np.random.Generator, kind: str, size: tuple[int, int]) -> bytes:
    """A small picture (smooth gradients plus noise) encoded as `kind` (jpg or png)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    noise = rng.normal(0, 20, (h, w, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    if kind == "jpg":
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    else:
        Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, seed: int = 0) -> list[str]:
    """SHARDS WebDataset shards (KEY.jpg or KEY.png, KEY.json, KEY.txt per sample), with the
    corrupt members of CORRUPT; returns those members as `SHARD.tar/MEMBER` paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    bad = []
    for s in range(SHARDS):
        count = SLOW_IMAGES if s == SLOW else int(rng.integers(3, 6))
        with tarfile.open(folder / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(count):
                key = f"sample{s:05d}{i:03d}"
                kind = "jpg" if rng.random() < 0.5 else "png"
                size = (int(rng.integers(40, 121)), int(rng.integers(60, 91)))
                data = image_bytes(rng, kind, size)
                if s in CORRUPT and i == 1:
                    how = CORRUPT[s]
                    kind = {"random": "jpg", "truncated_png": "png"}.get(how, "jpg")
                    if how == "random":
                        data = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
                    else:
                        data = image_bytes(rng, kind, size)
                        data = data[: len(data) // 2]
                    bad.append(f"{folder.name}/{s:05d}.tar/{key}.{kind}")
                caption = f"shard {s}, sample {i}, {size[0]}x{size[1]}"
                add_member(tar, f"{key}.{kind}", data)
                add_member(tar, f"{key}.json", json.dumps({"caption": caption}).encode())
                add_member(tar, f"{key}.txt", caption.encode())
    return bad


def process_table() -> dict[int, list[str]]:
    """pid -> command line of every process that can be read."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            table[int(entry)] = raw.decode(errors="replace").split("\0")
    return table


def find_extract(shard: str, deadline: float, job: subprocess.Popen) -> int:
    """The pid of the `dinov2 extract` process whose command line names `shard`."""
    while True:
        for pid, argv in process_table().items():
            if (
                len(argv) > 2
                and argv[0].endswith("dinov2")
                and argv[1] == "extract"
                and shard in argv
            ):
                return pid
        assert job.poll() is None, "the job ended before the shard was seen running"
        assert time.monotonic() < deadline, f"no dinov2 extract of {shard} appeared"
        time.sleep(0.01)


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def load_output(path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def test_ray_job_survives_a_killed_worker_and_equals_one_process(tmp_path, s2_model):
    try:
        import ray  # noqa: F401
    except ImportError as error:
        pytest.skip(f"Ray cannot be imported ({error}): pip install ray==2.60.0 (Python 3.10+)")
    if not TOOL.exists():
        pytest.skip(f"the dinov2 tool is not built: {TOOL} is missing (build the project, or set "
                    "DINOV2_BUILD_DIR to the build folder)")  # fmt: skip
    bad = write_shards(tmp_path / "data")
    shards = [f"data/{s:05d}.tar" for s in range(SHARDS)]
    slow = shards[SLOW]
    parts = tmp_path / "out" / f"{SLOW:05d}.safetensors.parts"
    extra = ["--recipe", "eval224", "--batch", "1"]

    stdout, stderr = tmp_path / "job.out", tmp_path / "job.err"
    args = ["--engine", "ray", "--inputs", "data/{00000..00019}.tar", "--model", str(s2_model)]
    args += ["--output", "out/", "--dinov2", str(TOOL), "--workers", "2", "--", *extra]
    cmd = [sys.executable, str(SCRIPT), *args]
    # Ray 2.60 kills the process group of a dead worker by itself; that is turned off here, so
    # that the death of the extract process below is the script's own doing (PR_SET_PDEATHSIG).
    env = dict(os.environ, RAY_process_group_cleanup_enabled="0")
    start = time.monotonic()
    with open(stdout, "w") as out, open(stderr, "w") as err:
        job = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 120
        extract = find_extract(slow, deadline, job)
        while not list(parts.glob("part-*.safetensors")):
            assert alive(extract), f"{slow} ended before writing a part; give it more images"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        worker = parent_of(extract)
        assert "ray::" in " ".join(process_table().get(worker, [])), "the parent is no Ray worker"
        assert alive(extract), f"{slow} finished before it could be killed; give it more images"
        os.kill(worker, signal.SIGKILL)
        # PR_SET_PDEATHSIG: the extract process dies with its worker, at once (without it, it
        # would go on writing the parts folder that the retry resumes from).
        gone_by = time.monotonic() + 10
        while alive(extract):
            assert time.monotonic() < gone_by, "dinov2 extract outlived its killed Ray worker"
            time.sleep(0.01)
        rc = job.wait(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    seconds = time.monotonic() - start
    log = stdout.read_text() + stderr.read_text()
    print(f"distributed job: {seconds:.1f} s\n{log}")

    assert rc == 3, log  # finished, with the corrupt members listed
    assert "dinov2 verify:" in log
    line = next(t for t in stdout.read_text().splitlines() if f"] {slow}:" in t)
    assert f"{SLOW_IMAGES} rows" in line and "attempt 1" not in line, line
    assert "resumed:" in line and "done by an earlier run" in line, line
    assert not parts.exists()
    outputs = sorted((tmp_path / "out").glob("*.safetensors"))
    assert [p.name for p in outputs] == [f"{s:05d}.safetensors" for s in range(SHARDS)]

    # A second run: dinov2 extract --resume recognises every output as its finished run.
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    again = run_script(*args, cwd=tmp_path)
    assert again.returncode == 3, again.stdout + again.stderr
    assert again.stdout.count("(already finished by an earlier run)") == SHARDS, again.stdout
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes

    # One process over all the shards, and the shards' outputs merged in name order.
    single = tmp_path / "single.safetensors"
    r = run_tool("extract", "--model", s2_model, "-o", single, *extra, "--threads", 1, *shards,
                 cwd=tmp_path)  # fmt: skip
    assert r.returncode == 3, r.stderr
    merged = tmp_path / "merged.safetensors"
    r = run_tool("merge", "-o", merged, *outputs, cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    t_single, m_single = load_output(single)
    t_merged, m_merged = load_output(merged)
    paths = json.loads(m_single["paths"])
    assert json.loads(m_merged["paths"]) == paths
    assert len(set(paths)) == len(paths) and not set(paths) & set(bad)
    assert sum(p.startswith(slow + "/") for p in paths) == SLOW_IMAGES
    if "keys" in m_single or "keys" in m_merged:
        assert json.loads(m_merged["keys"]) == json.loads(m_single["keys"])
    assert set(t_merged) == set(t_single)
    for name in ("cls", "registers", "patch"):
        assert name in t_single
        assert torch.equal(t_merged[name], t_single[name]), name
    failed_single = [f["path"] for f in json.loads(m_single["failed"])]
    failed_merged = [f["path"] for f in json.loads(m_merged["failed"])]
    assert failed_merged == failed_single
    assert sorted(failed_single) == sorted(bad)
