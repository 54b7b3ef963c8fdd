"""Coverage-guided fuzzing of the .gflv reader and decoder with atheris (libFuzzer).

The target and the structure-aware mutator are ``tests/fuzz/gflv_harness.py``'s: each input
is read, scanned and decoded in process with the small test codecs (intra, DVC, FVC), and
any exception that is not a GopflowError is a crash; the mutator parses a stream into its
header and units, edits fields, kinds, order, level and flag bytes, motion models, latent
containers and strings, then recomputes the CRCs and the stream check, so inputs get past
the checksums into CompressAI's entropy decoding, the motion models and the synthesis. One
input in ten goes to libFuzzer's own byte mutator instead; crossover splices the units of
two streams. gopflow is instrumented for coverage; compressai is not: with its Python
instrumented too, the process grew by about 40 MB a thousand inputs (atheris' hooks in
compressai's entropy models and layers; gopflow alone stays flat) until libFuzzer's RSS
limit stopped the run. CompressAI's rANS coder is C++ and never instrumented anyway.

The run is a child process (libFuzzer exits the process it runs in); this script prints its
progress lines and then a summary: inputs executed, exec/s, coverage (libFuzzer's ``cov``
edges and ``ft`` features), corpus growth, crashes and hangs with their files. Seeds come
from ``tests/fuzz/corpus`` (``--make-corpus`` writes them again); new inputs go to
``OUT/corpus``, crash and hang inputs to ``OUT/``.

    .venv/bin/python bench/fuzz_gflv.py --runs 100000            # or --seconds 3600
    .venv/bin/python bench/fuzz_gflv.py --runs 2000 --out /tmp/fz # a smoke run
    .venv/bin/python bench/fuzz_gflv.py --make-corpus             # rewrite the seeds

Reproduce a crash: ``.venv/bin/python bench/fuzz_gflv.py --replay OUT/crash-...``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

BYTE_MUTATIONS = 0.1
"""Share of inputs mutated by libFuzzer's own byte mutator (atheris.Mutate)."""


def _child(args: argparse.Namespace, libfuzzer: list[str]) -> None:
    import random

    import atheris

    with atheris.instrument_imports(include=["gopflow"]):
        import torch

        from gopflow.codecs.dvc import global_motion, grid_coding, model  # noqa: F401
        from gopflow.codecs.fvc import model as fvc_model  # noqa: F401
        from gopflow.codecs.learned import bitstream, engine, hyperprior  # noqa: F401
        from gopflow.jobs import decode  # noqa: F401
    from fuzz import gflv_harness as harness

    torch.set_num_threads(1)
    harness.codecs()
    seeds = harness.load_corpus()

    def test_one_input(data: bytes) -> None:
        harness.run_one(data, limit=None)  # hangs: libFuzzer's -timeout

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < BYTE_MUTATIONS:
            return atheris.Mutate(data, max_size)
        return harness.mutate(data, rng, max_size, seeds,
                              raw=lambda raw: atheris.Mutate(raw, max_size))

    def custom_crossover(first: bytes, second: bytes, max_size: int, seed: int) -> bytes:
        return harness.crossover(first, second, random.Random(seed), max_size)

    atheris.Setup([sys.argv[0], *libfuzzer], test_one_input, custom_mutator=custom_mutator,
                  custom_crossover=custom_crossover)
    atheris.Fuzz()


_STATUS = re.compile(r"#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+).*?exec/s: (\d+)"
                     r"(?: rss: (\d+)Mb)?")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_DONE = re.compile(r"^Done (\d+) (?:runs )?in (\d+) second")


def _summary(log: list[str], out: Path, wall: float, code: int) -> None:
    status = [m for line in log if (m := _STATUS.search(line))]
    stats = {m.group(1): int(m.group(2)) for line in log if (m := _STAT.search(line))}
    first, last = (status[0], status[-1]) if status else (None, None)
    crashes = sorted(p.name for p in out.glob("crash-*"))
    hangs = sorted(p.name for p in out.glob("timeout-*"))
    ooms = sorted(p.name for p in out.glob("oom-*"))
    done = [m for line in log if (m := _DONE.search(line))]
    if done:  # -atheris_runs ends without libFuzzer's final stats
        stats.setdefault("number_of_executed_units", int(done[-1].group(1)))
        stats.setdefault("average_exec_per_sec",
                         round(int(done[-1].group(1)) / max(int(done[-1].group(2)), 1)))
    runs = stats.get("number_of_executed_units", int(last.group(1)) if last else 0)
    print("\n=== fuzz_gflv summary ===")
    print(f"inputs executed: {runs} ({stats.get('average_exec_per_sec', '?')} exec/s while "
          f"fuzzing; {wall:.0f} s wall with start-up)")
    if first and last:
        print(f"coverage: cov {first.group(3)} -> {last.group(3)} edges, "
              f"ft {first.group(4)} -> {last.group(4)} features; corpus "
              f"{first.group(5)} -> {last.group(5)} inputs ({last.group(6)})")
    print(f"new units: {stats.get('new_units_added', '?')}, slowest input: "
          f"{stats.get('slowest_unit_time_sec', '?')} s, peak RSS: "
          f"{stats.get('peak_rss_mb', last.group(8) if last else '?')} MB")
    print(f"crashes: {len(crashes)} {crashes}")
    print(f"hangs (timeouts): {len(hangs)} {hangs}; out of memory: {len(ooms)} {ooms}")
    print(f"libFuzzer exit code: {code}; log and inputs in {out}")


def _replay(paths: list[str]) -> int:
    from fuzz import gflv_harness as harness

    for path in paths:
        data = Path(path).read_bytes()
        print(f"{path}: {harness.run_one(data, limit=None)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs to execute")
    parser.add_argument("--seconds", type=int, default=0,
                        help="stop after this long instead (libFuzzer -max_total_time)")
    parser.add_argument("--timeout", type=int, default=30, help="seconds an input may run")
    parser.add_argument("--max-len", type=int, default=1 << 16, help="bytes of an input")
    parser.add_argument("--rss-limit-mb", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fuzz_gflv")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--make-corpus", action="store_true",
                        help="write the seed streams to tests/fuzz/corpus and stop")
    parser.add_argument("--replay", nargs="+", help="run these inputs once and stop")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, libfuzzer = parser.parse_known_args()
    if args.make_corpus:
        from fuzz import gflv_harness as harness

        for path in harness.make_corpus():
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")
        return 0
    if args.replay:
        return _replay(args.replay)
    if args.child:  # the flags below, as the parent passed them
        _child(args, libfuzzer)
        return 0
    out = args.out.resolve()
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    flags = [f"-timeout={args.timeout}", f"-max_len={args.max_len}",
             f"-rss_limit_mb={args.rss_limit_mb}", f"-seed={args.seed}",
             "-print_final_stats=1", f"-artifact_prefix={out}/"]
    flags.append(f"-max_total_time={args.seconds}" if args.seconds
                 else f"-atheris_runs={args.runs}")
    flags += [*libfuzzer, str(out / "corpus"), str(TESTS / "fuzz" / "corpus")]
    command = [sys.executable, __file__, "--child", *flags]
    print("$", " ".join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    log: list[str] = []
    with open(out / "fuzz.log", "w") as handle, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=out) as child:
        assert child.stdout is not None
        for line in child.stdout:
            handle.write(line)
            log.append(line.rstrip("\n"))
            if not line.startswith("#") or "NEW" in line or "pulse" in line or "DONE" in line:
                print(line, end="", flush=True)
        code = child.wait()
    _summary(log, out, time.perf_counter() - started, code)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
