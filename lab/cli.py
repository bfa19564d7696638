"""``llmslo lab``: run a scenario file against the lab stack, rescore a stored run, compare runs.

    llmslo lab run --scenarios FILE --out DIR [--mode M]... [--only NAME]... [--resume]
    llmslo lab report DIR [--mode M]...
    llmslo lab compare DIR... [-o FILE]
    llmslo lab calibrate DIR... -o FILE
    llmslo lab pack DIR
    llmslo lab generate --seed S --count N [-o FILE]

Every mode comes from one run: the evidence of each case is stored, and each mode re-attributes
it (``lab.scorecard``). One mode writes ``DIR/scorecard.*``; several write ``DIR/<mode>/scorecard.*``
and ``DIR/compare.md``. A user's mistake exits 2 with one line, before anything starts.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from lab.scorecard import MODES

EXIT_USAGE = 2
DEFAULT_MODE = "combined"


class LabCliError(Exception):
    """A user's mistake: printed as ``llmslo lab: <message>``, exit 2."""


class _Parser(argparse.ArgumentParser):
    # One line, like every other llmslo error, instead of argparse's usage block.
    def error(self, message: str):
        raise LabCliError(f"{self.prog.removeprefix('llmslo lab').strip() or 'usage'}: {message} (see --help)")


def _modes(args: argparse.Namespace) -> list[str]:
    return list(dict.fromkeys(args.mode or [DEFAULT_MODE]))


def cmd_run(args: argparse.Namespace) -> int:
    from lab import scorecard
    from lab.scenarios import ScenarioError, estimate_s, load_scenarios

    modes = _modes(args)
    try:
        scenarios = load_scenarios(args.scenarios, only=args.only)
    except ScenarioError as e:
        raise LabCliError(str(e)) from None
    out = Path(args.out)
    cases_dir = out / "cases"
    packed = out / scorecard.PACKED
    held = {p.stem for p in cases_dir.glob("*.json")} if cases_dir.is_dir() else set()
    if held or packed.is_file():
        if not args.resume:
            what = f"{len(held)} case(s)" + (f" and {scorecard.PACKED}" if packed.is_file() else "")
            raise LabCliError(f"run: {out} already holds {what}; choose another --out, or --resume to run only the "
                              "scenarios it lacks")
        try:  # packed or not; a case whose baseline was unhealthy runs again: it was never scored
            done = {c["name"] for c in scorecard.load_cases(out) if not c.get("invalid")}
        except scorecard.ScorecardError as e:
            raise LabCliError(f"run: {e}") from None
    else:
        done = set()
    todo = [s for s in scenarios if s.name not in done]
    if os.geteuid() != 0:
        raise LabCliError("run: the lab needs root (cgroups, nftables, eBPF probes and a mount namespace)")
    from lab.runner import StackBroken, run_suite
    from lab.stack import StackError

    status = 0
    if todo:
        minutes = estimate_s(todo) / 60
        print(f"llmslo lab: {len(todo)} scenario(s) from {args.scenarios}"
              + (f" ({len(done)} already done)" if done else "")
              + f", about {minutes:.0f} min; cases go to {cases_dir}, logs to {out / 'lab.log'} "
              f"and {out / 'stack' / 'logs'}", file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        # The progress line owns stderr; the runner's and the stack's events go to a file.
        logging.basicConfig(filename=out / "lab.log", level=logging.INFO,
                            format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        # SIGTERM stops a run like Ctrl-C does: the stack's own cleanup removes every fault.
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            asyncio.run(run_suite(todo, out, scenario_file=str(args.scenarios)))
        except (StackError, StackBroken) as e:
            print(f"llmslo lab: run stopped: {e}", file=sys.stderr)
            status = 1
    if not scorecard.case_names(out):
        return status or 1
    cards = scorecard.report([out], modes, out)
    for mode in modes:
        print(f"llmslo lab: {mode}: {scorecard.mode_dir(out, mode, modes) / 'scorecard.md'}", file=sys.stderr)
    print(scorecard.compare_table([(str(out), c) for c in cards]), end="")
    return status


def cmd_report(args: argparse.Namespace) -> int:
    from lab import scorecard

    dirs = [Path(d) for d in args.dirs]
    if len(dirs) > 1 and not args.out:
        raise LabCliError("report: several runs are pooled into one scorecard: say where it goes with --out DIR")
    out = Path(args.out) if args.out else dirs[0]
    modes = _modes(args) if args.mode else (scorecard.stored_modes(out) or [DEFAULT_MODE])
    try:
        cards = scorecard.report(dirs, modes, out)
    except scorecard.ScorecardError as e:
        raise LabCliError(f"report: {e}") from None
    for mode in modes:
        print(f"llmslo lab: {mode}: {scorecard.mode_dir(out, mode, modes) / 'scorecard.md'}", file=sys.stderr)
    print(scorecard.compare_table([(str(out), c) for c in cards]), end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lab import scorecard

    cards = []
    try:
        for d in args.dirs:
            cards += scorecard.find_scorecards(Path(d))
    except scorecard.ScorecardError as e:
        raise LabCliError(f"compare: {e}") from None
    table = scorecard.compare_table(cards)
    print(table, end="")
    if args.output:
        try:
            Path(args.output).write_text(table)
        except OSError as e:
            raise LabCliError(f"compare: cannot write {args.output}: {e.strerror or e}") from None
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Write the responder's calibration, fitted on the runs' training parts (combined mode)."""
    import json

    from lab import scorecard

    try:
        table = scorecard.calibration_table([Path(d) for d in args.dirs])
    except scorecard.ScorecardError as e:
        raise LabCliError(f"calibrate: {e}") from None
    try:
        Path(args.output).write_text(json.dumps(table, indent=1) + "\n")
    except OSError as e:
        raise LabCliError(f"calibrate: cannot write {args.output}: {e.strerror or e}") from None
    print(f"llmslo lab: calibration from {table['source']} written to {args.output}", file=sys.stderr)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    """A finished run's cases in one gzip JSON Lines file (what the repository keeps)."""
    from lab import scorecard

    try:
        target = scorecard.pack_cases(Path(args.dir))
    except scorecard.ScorecardError as e:
        raise LabCliError(f"pack: {e}") from None
    print(f"llmslo lab: cases packed into {target} ({target.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """A randomized scenario file (``lab.generate``) on stdout or in ``-o FILE``."""
    from lab.generate import MAX_COUNT, render

    if args.seed < 0:
        raise LabCliError(f"generate: --seed must be a non-negative integer, got {args.seed}")
    if not 1 <= args.count <= MAX_COUNT:
        raise LabCliError(f"generate: --count must be in 1..{MAX_COUNT}, got {args.count}")
    text = render(args.seed, args.count)
    if not args.output:
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    if target.exists() and not args.force:
        raise LabCliError(f"generate: {target} exists; choose another -o, or --force to replace it")
    try:
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.replace(target)
    except OSError as e:
        raise LabCliError(f"generate: cannot write {target}: {e.strerror or e}") from None
    print(f"llmslo lab: {args.count} scenario(s) from seed {args.seed} written to {target}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmslo lab", description="The attribution lab: real faults, a scorecard, the ablation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run scenarios against the lab stack, then score them")
    r.add_argument("--scenarios", required=True, help="scenario file (YAML), e.g. lab/scenarios/standard.yaml")
    r.add_argument("--out", required=True, help="run directory: cases/ and the scorecards")
    r.add_argument("--mode", action="append", choices=MODES,
                   help="evidence the verdicts are scored on; repeat for an ablation (default combined)")
    r.add_argument("--only", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    r.add_argument("--resume", action="store_true", help="skip scenarios whose case the run directory already has")
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="score the stored cases of a run again (md, json, charts); several runs "
                         "(a corpus run in parts) are pooled")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="run directory (cases/ or cases.jsonl.gz)")
    rep.add_argument("--out", help="where the scorecards go (default: the run directory; required for several)")
    rep.add_argument("--mode", action="append", choices=MODES,
                     help="modes to score (default: those the run already has, else combined)")
    rep.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="side-by-side table of scorecards (runs and modes)")
    c.add_argument("dirs", nargs="+", metavar="DIR", help="run directory or scorecard.json")
    c.add_argument("-o", "--output", help="also write the table (Markdown) to this file")
    c.set_defaults(func=cmd_compare)

    cal = sub.add_parser("calibrate", help="fit the responder's calibration (score -> probability, isotonic) on the "
                         "training part of runs' combined-mode verdicts")
    cal.add_argument("dirs", nargs="+", metavar="DIR", help="run directory (cases/ or cases.jsonl.gz); several pool")
    cal.add_argument("-o", "--output", required=True,
                     help="file to write, e.g. responder/attribution/calibration.json (read through LLMSLO_CALIBRATION_FILE)")
    cal.set_defaults(func=cmd_calibrate)

    pk = sub.add_parser("pack", help="pack a run's cases/ into cases.jsonl.gz, merged with what it packed before "
                        "(report, calibrate and run --resume read both)")
    pk.add_argument("dir", help="run directory with cases/")
    pk.set_defaults(func=cmd_pack)

    g = sub.add_parser("generate", help="draw a randomized scenario file: kinds, strengths around the paging "
                       "threshold, pairs of faults, controls, timings and load levels")
    g.add_argument("--seed", type=int, required=True, help="what to draw from; the same seed gives the same file")
    g.add_argument("--count", type=int, required=True, help="how many scenarios")
    g.add_argument("-o", "--output", help="file to write (default: stdout)")
    g.add_argument("--force", action="store_true", help="replace the output file if it exists")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except LabCliError as e:
        print(f"llmslo lab: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmslo lab: interrupted; finished cases are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
