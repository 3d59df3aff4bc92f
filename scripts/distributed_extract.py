#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Run `dinov2 extract` over many shards on a Ray cluster, one task per shard, then check the
result with `dinov2 verify`.

  scripts/distributed_extract.py --engine ray --inputs 'data/{00000..00019}.tar' \\
      --model M.pt --output OUT/ [--dinov2 PATH] [--address ADDR] [--workers N] \\
      [--threads-per-task T] [--retries K] [--dry-run] [-- EXTRA extract arguments]

Each shard (a WebDataset .tar, a folder of images or an image file) becomes one Ray task that
runs

  dinov2 extract --model M --output OUT/<stem>.safetensors --resume --threads T EXTRA SHARD

as a child process, where <stem> is the shard's file name without `.tar`. The child is set to
receive SIGKILL when the worker that started it dies (Linux `PR_SET_PDEATHSIG`), so a killed
worker never leaves an orphan writing the parts folder that the retry of its task resumes from.
Exit codes 0 and 3 of `dinov2 extract` mean the shard is done (3: some of its images could not
be read and are listed in its output); any other code raises, with the end of the child's
stderr, and Ray retries the task (`--retries` times; worker deaths count too). Every task runs
with `--resume`: a shard whose output is already the finished output of the same run (model,
weights digest, recipe, batch, dtypes, input list: the fingerprint `dinov2 extract` records) is
recognised by the tool and not computed again, and a shard killed part way goes on from its
parts.

When every task has ended, `dinov2 verify --features OUT/ SHARD...` checks that every image of
every shard appears exactly once in OUT/ (as a row or as a listed failure). The script exits
with verify's code: 0 (complete), 3 (complete, some images failed), 4 (incomplete or duplicated),
or 4 as well when a task exhausted its retries, after listing those shards. Usage errors
(no shard matched, two shards with the same stem, no dinov2 tool, no Ray) exit with 2.

Paths are passed to the tool as they were matched, relative to the folder the script runs in;
each task runs the tool in that same folder, so the rows' `paths` are what a one-process
`dinov2 extract` started there would record. On a real cluster, the data, the model, OUT/ and
the tool must be visible at the same paths on every node (docs/SCALE.md).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROG = "distributed_extract"

# Options the script sets itself, refused in the extra arguments.
RESERVED = {"-m", "--model", "-o", "--output", "--resume", "--threads", "--shard", "--format"}


class UsageError(Exception):
    """A mistake in the command line or the inputs: reported and exit code 2."""


# ---------------------------------------------------------------------------------------------
# Inputs


def _matching_brace(text: str, start: int) -> int:
    """Index of the `}` closing the `{` at `start`, or -1."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top_level(body: str) -> list[str]:
    """`body` split at the commas that are not inside a nested brace group."""
    parts, depth, begin = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[begin:i])
            begin = i + 1
    parts.append(body[begin:])
    return parts


_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def _range_items(first: str, last: str) -> list[str]:
    """`{first..last}` as bash expands it: inclusive, either direction, and zero-padded to the
    wider end when either end is written with a leading zero (`{00000..00019}`)."""
    a, b = int(first), int(last)
    padded = any(re.match(r"^-?0\d", s) for s in (first, last))
    width = max(len(first), len(last)) if padded else 0
    step = 1 if b >= a else -1
    return [f"{n:0{width}d}" for n in range(a, b + step, step)]


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion of one pattern, in the order bash gives: `{a,b}` lists (nestable) and
    `{N..M}` integer ranges. A group with neither a top-level comma nor a range, and an unmatched
    brace, stay as written."""
    start = 0
    while True:
        open_ = pattern.find("{", start)
        if open_ < 0:
            return [pattern]
        close = _matching_brace(pattern, open_)
        if close < 0:
            return [pattern]
        body = pattern[open_ + 1 : close]
        ranged = _RANGE.match(body)
        items = _range_items(*ranged.groups()) if ranged else _split_top_level(body)
        if ranged or len(items) > 1:
            head, tail = pattern[:open_], pattern[close + 1 :]
            out: list[str] = []
            for item in items:
                out += expand_braces(head + item + tail)
            return out
        start = open_ + 1  # a literal `{...}`: look for a group after its opening brace


def resolve_inputs(patterns: Sequence[str]) -> list[str]:
    """Every --inputs value brace-expanded, then globbed; sorted, de-duplicated. A pattern that
    matches nothing is an error: a missing shard must not shrink the job unnoticed."""
    found = set()
    for value in patterns:
        for pattern in expand_braces(value):
            if glob.has_magic(pattern):
                matches = glob.glob(pattern)
            else:
                matches = [pattern] if os.path.exists(pattern) else []
            if not matches:
                raise UsageError(f"--inputs {value!r}: nothing matches {pattern!r}")
            found.update(os.path.normpath(m) for m in matches)
    return sorted(found)


def shard_stem(shard: str) -> str:
    name = os.path.basename(shard)
    return name.removesuffix(".tar")


def output_names(shards: Sequence[str], out_dir: str) -> dict[str, str]:
    """OUT/<stem>.safetensors for every shard; two shards with one stem are refused."""
    by_stem: dict[str, list[str]] = {}
    for shard in shards:
        by_stem.setdefault(shard_stem(shard), []).append(shard)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        lines = [f"  {stem}: {', '.join(paths)}" for stem, paths in sorted(clashes.items())]
        raise UsageError(
            "shards with the same name would write the same output file; rename them or run "
            "them into different --output folders:\n" + "\n".join(lines)
        )
    return {s: os.path.join(out_dir, f"{shard_stem(s)}.safetensors") for s in shards}


def find_tool(given: str | None) -> str:
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise UsageError(f"--dinov2 {given}: not an executable file")
        return os.path.abspath(given)
    built = REPO / "build" / "bin" / "dinov2"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    on_path = shutil.which("dinov2")
    if on_path:
        return on_path
    raise UsageError(
        f"the dinov2 tool is neither at {built} nor on PATH; build it or pass --dinov2"
    )


# ---------------------------------------------------------------------------------------------
# The Ray task (pickled by value: everything it needs is imported or defined inside it)


def run_shard(cmd: list[str], shard: str, cwd: str, attempts) -> dict:
    """Runs one `dinov2 extract` command; returns a small summary, or raises so that Ray retries.

    `attempts` is the counter actor: Ray gives a task no attempt number, so each attempt asks
    the actor for the next one of its shard."""
    import ctypes
    import functools
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    import ray

    attempt = ray.get(attempts.next.remote(shard))
    if not os.path.isdir(cwd):
        raise RuntimeError(f"{shard}: the folder {cwd} does not exist on this node")

    preexec = None
    if sys.platform.startswith("linux"):
        # prctl(PR_SET_PDEATHSIG, SIGKILL) in the child, between fork and exec. The signal comes
        # when the thread that forked the child ends; Ray runs a task on its worker's main thread,
        # so that is when the worker process dies. The library is loaded here, before the fork,
        # so that the child only makes the call. If the worker died before the call, the child
        # already has a new parent and kills itself.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        pr_set_pdeathsig = 1

        def die_with(parent: int) -> None:
            prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

        preexec = functools.partial(die_with, os.getpid())

    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        preexec_fn=preexec,
    )
    seconds = time.monotonic() - start
    if proc.returncode not in (0, 3):
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(
            f"{shard}: dinov2 extract exited with {proc.returncode} (attempt {attempt}):\n{tail}"
        )
    rows = re.search(r"wrote (\d+) rows", proc.stderr)
    failed = re.search(r"(\d+) of (\d+) inputs failed", proc.stderr)
    resumed = re.search(r"resuming: (\d+ of \d+ inputs were done by an earlier run)", proc.stderr)
    finished = "is already the finished output of this run" in proc.stderr
    rows = rows or re.search(r"finished output of this run \((\d+) rows", proc.stderr)
    failed = failed or re.search(r"rows, (\d+) failed\)", proc.stderr)
    return {
        "shard": shard,
        "rc": proc.returncode,
        "seconds": seconds,
        "rows": int(rows.group(1)) if rows else None,
        "failed": int(failed.group(1)) if failed else 0,
        "attempt": attempt,
        "resumed": resumed.group(1) if resumed else None,
        "finished_before": finished,
    }


class Attempts:
    """Counts the attempts of each shard's task (a Ray actor)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def next(self, shard: str) -> int:
        self.counts[shard] = self.counts.get(shard, 0) + 1
        return self.counts[shard]


# ---------------------------------------------------------------------------------------------
# The driver


def extract_command(tool: str, args: argparse.Namespace, out: str, shard: str) -> list[str]:
    cmd = [tool, "extract", "--model", args.model, "--output", out, "--resume"]
    return cmd + ["--threads", str(args.threads_per_task), *args.extra, shard]


def describe(result: dict) -> str:
    parts = [f"rc {result['rc']}"]
    if result["rows"] is not None:
        parts.append(f"{result['rows']} rows")
    if result["failed"]:
        parts.append(f"{result['failed']} failed")
    parts.append(f"{result['seconds']:.1f} s")
    parts.append(f"attempt {result['attempt']}")
    text = ", ".join(parts)
    if result["resumed"]:
        text += f" (resumed: {result['resumed']})"
    if result.get("finished_before"):
        text += " (already finished by an earlier run)"
    return text


def short_error(error: BaseException) -> str:
    """The last lines of a Ray error: the exception raised by the task, or why the worker died."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return "\n    ".join(lines[-6:])


def run_on_ray(
    args: argparse.Namespace, tool: str, todo: dict[str, str], done: int
) -> tuple[list[dict], list[str]]:
    """Runs the shards of `todo` (shard -> output) as Ray tasks; returns the summaries of the
    shards done and the shards that failed after their retries."""
    import ray

    if args.address:
        ray.init(address=args.address)
    else:
        # A fresh local cluster with real worker processes. The tasks pass only small dicts
        # through the object store, so it is kept small (Ray's default takes 30% of memory).
        ray.init(
            address="local",
            num_cpus=args.workers,
            include_dashboard=False,
            object_store_memory=100 * 1024 * 1024,
        )
    try:
        attempts = ray.remote(num_cpus=0)(Attempts).remote()
        task = ray.remote(
            num_cpus=args.threads_per_task, max_retries=args.retries, retry_exceptions=True
        )(run_shard)
        cwd = os.getcwd()
        pending = {
            task.remote(extract_command(tool, args, out, shard), shard, cwd, attempts): shard
            for shard, out in todo.items()
        }
        total, results, failed = done + len(pending), [], []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(ready[0])
            done += 1
            try:
                result = ray.get(ready[0])
                results.append(result)
                print(f"[{done}/{total}] {shard}: {describe(result)}", flush=True)
            except ray.exceptions.RayError as error:  # a task that exhausted its retries
                failed.append(shard)
                message = short_error(error)
                print(f"[{done}/{total}] {shard}: FAILED after its retries:\n    {message}")
                sys.stdout.flush()
        return results, failed
    finally:
        ray.shutdown()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="scripts/distributed_extract.py",
        description="Run `dinov2 extract` over many shards on a Ray cluster, one task per shard, "
        "then check the result with `dinov2 verify` (docs/SCALE.md).",
        epilog="Arguments after `--` are passed to every `dinov2 extract`, e.g. "
        "`-- --recipe eval224 --batch 8`.",
    )
    parser.add_argument("--engine", default="ray", help="ray (the only engine; default ray)")
    parser.add_argument(
        "--inputs",
        action="append",
        required=True,
        metavar="PATTERN",
        help="shards: brace-expanded ({00000..00019}, {a,b}) then globbed; may be repeated",
    )
    parser.add_argument("--model", required=True, help="the --model of dinov2 extract")
    parser.add_argument("--output", required=True, metavar="OUT", help="folder of the outputs")
    parser.add_argument(
        "--dinov2", metavar="PATH", help="the tool (default: build/bin/dinov2, else PATH)"
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="a running Ray cluster to use (default: start a local one)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="CPUs of the local cluster (default: all of them; not used with --address)",
    )
    parser.add_argument(
        "--threads-per-task",
        type=int,
        default=1,
        metavar="T",
        help="--threads of each dinov2 extract, and the CPUs its task reserves (default 1)",
    )
    parser.add_argument(
        "--retries", type=int, default=3, metavar="K", help="retries of a failed task (default 3)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)
    args.extra = extra
    if args.workers < 1 or args.threads_per_task < 1 or args.retries < 0:
        parser.error("--workers and --threads-per-task must be at least 1, --retries at least 0")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        if args.engine == "spark":
            raise UsageError(
                "--engine spark is not supported: Spark needs a JVM and a 456 MB package to "
                "run one subprocess per shard, which Ray does from an 80 MB wheel with retries "
                "built in (docs/SCALE.md, 'Why Ray and not Spark'); use --engine ray"
            )
        if args.engine != "ray":
            raise UsageError(f"--engine {args.engine}: unknown engine; the one engine is ray")
        reserved = sorted({a.split("=")[0] for a in args.extra} & RESERVED)
        if reserved:
            raise UsageError(f"the script sets {', '.join(reserved)} itself; remove it after `--`")
        shards = resolve_inputs(args.inputs)
        outputs = output_names(shards, args.output)
        try:
            tool = find_tool(args.dinov2)
        except UsageError:
            if not args.dry_run:
                raise
            tool = args.dinov2 or "dinov2"  # a dry run only prints the commands
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2

    verify = [tool, "verify", "--features", args.output, *shards]
    if args.dry_run:
        for shard, out in outputs.items():
            print(shlex.join(extract_command(tool, args, out, shard)))
        print(shlex.join(verify))
        return 0

    start = time.monotonic()
    try:
        import ray  # noqa: F401
    except ImportError:
        print(
            f"{PROG}: Ray is not installed for {sys.executable}: install it with "
            f"`{sys.executable} -m pip install ray==2.60.0`, or run the script with the "
            "Python that has it (.venv/bin/python after scripts/setup.sh)",
            file=sys.stderr,
        )
        return 2
    os.makedirs(args.output, exist_ok=True)
    results, failed = run_on_ray(args, tool, outputs, 0)
    seconds = time.monotonic() - start
    rows = sum(r["rows"] or 0 for r in results)
    retried = sum(r["attempt"] > 1 for r in results)
    before = sum(bool(r.get("finished_before")) for r in results)
    print(
        f"{PROG}: {len(shards)} shards in {seconds:.1f} s: {len(results)} done ({retried} on a "
        f"retry; {rows} rows; {before} finished by an earlier run), {len(failed)} failed",
        flush=True,
    )
    rc = subprocess.run(verify, check=False).returncode
    if failed:
        print(f"{PROG}: these shards failed after {args.retries} retries:", file=sys.stderr)
        for shard in failed:
            print(f"  {shard}", file=sys.stderr)
        return rc if rc not in (0, 3) else 4
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
