"""The ``scalelab`` command: images, labs for people, cleanup, reports."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import OPTIONS, LabConfig, build_config
from harness.errors import LabError, UserError
from harness.image import cache


def _add_lab_options(p: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        if opt.flag:
            p.add_argument(opt.cli, dest=opt.name, action="store_true", default=None,
                           help=opt.help)
        else:
            p.add_argument(opt.cli, dest=opt.name, default=None, help=opt.help)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scalelab", description="A test lab for scalability experiments."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _image_parser(sub.add_parser("image", help="build and list base images"))

    up = sub.add_parser("up", help="bring a lab up and leave it running")
    _add_lab_options(up)

    down = sub.add_parser("down", help="take down a run left up, all its labs "
                          "(default: the newest kept run)")
    down.add_argument("run", nargs="?", help="run id, one of its labs' ids, or run directory")

    cl = sub.add_parser("clean", help="remove what dead runs left behind")
    cl.add_argument("--all", action="store_true", help="also runs kept up and live runs")
    cl.add_argument("run", nargs="?", help="only this run (id or directory)")

    sub.add_parser("ls", help="runs known on this host, each with its labs")

    top = sub.add_parser("top", help="latest resources of every guest of a kept run, busiest first")
    top.add_argument("run", nargs="?", help="run id or directory (default: the newest kept)")
    top.add_argument("--interval", type=float, default=1.0,
                     help="seconds between the two samples the rates come from (default 1)")

    rep = sub.add_parser("report", help="(re)render a run's report")
    rep.add_argument("run_dir")
    rep.add_argument("--tz", help="time zone to draw in (default: the run's)")
    rep.add_argument("--out", help="write the report here instead of the run directory")

    cmp_ = sub.add_parser("compare", help="compare two runs")
    cmp_.add_argument("run_a")
    cmp_.add_argument("run_b")
    cmp_.add_argument("--threshold", type=float, default=0.10,
                      help="relative change flagged as a regression (default 0.10)")
    cmp_.add_argument("--out", help="directory for compare.html/.txt (default: run_b)")
    cmp_.add_argument("--fail-on-regression", action="store_true",
                      help="exit 1 when a regression is found")

    fault = sub.add_parser("fault", help="inject a fault into a lab that is up")
    fault.add_argument("action", choices=["kill", "pause", "resume", "isolate", "heal",
                                          "limit", "unlimit", "degrade", "restore"])
    fault.add_argument("guests", nargs="*", help="guest names")
    fault.add_argument("--run", help="run id (default: the newest lab up)")
    fault.add_argument("--rate", default="1mbit", help="rate for `limit` (tc tbf)")
    for opt, example in (("delay", "100ms"), ("jitter", "10ms"), ("loss", "5%"),
                         ("duplicate", "0.5%"), ("reorder", "2%")):
        fault.add_argument(f"--{opt}", help=f"{opt} for `degrade` (e.g. {example})")
    fault.add_argument("--to", nargs="+", metavar="GUEST",
                       help="`degrade` only traffic to these guests (default: all others)")
    return p


def _image_parser(img: argparse.ArgumentParser) -> None:
    isub = img.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    b = isub.add_parser("build", help="build the base image (cached by recipe)")
    b.add_argument("--recipe", help="recipe TOML file (default: pyproject or the base)")
    b.add_argument("--vm", action="store_true", help="add a kernel and initramfs for VMs")
    b.add_argument("--mirror", help="Debian mirror (default: the host's apt source)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    isub.add_parser("list", help="cached images with size and digest")
    pr = isub.add_parser("prune", help="remove cached images other than the current ones")
    pr.add_argument("--recipe", help="recipe whose images to keep")
    pr.add_argument("--all", action="store_true", help="remove every cached image")
    v = isub.add_parser("verify", help="check an image's sha256 against its manifest")
    v.add_argument("key")


def _image_command(args: argparse.Namespace) -> int:
    from harness.image.build import build, sha256_file
    from harness.image.recipe import load_recipe

    if args.image_command == "build":
        recipe = load_recipe(Path(args.recipe) if args.recipe else None, Path.cwd())
        if args.vm:
            recipe = recipe.with_vm()
        if args.mirror:
            recipe = recipe.with_mirror(args.mirror)
        image, built = build(recipe, force=args.force)
        if built:
            print(f"built image {image.key}: {image.path} ({image.size >> 20} MiB, "
                  f"{image.digest[:19]}…, {image.manifest.get('build_seconds')} s)")
        else:
            print(f"image {image.key} is already built and cached: {image.path} "
                  "(nothing to do; --force rebuilds)")
        return 0
    if args.image_command == "list":
        images = cache.list_images()
        if not images:
            print(f"no images cached in {cache.images_root()}")
            return 0
        print(f"{'KEY':<18}{'RECIPE':<12}{'VM':<4}{'SIZE':>9}  {'CREATED':<22}DIGEST")
        for i in images:
            print(f"{i.key:<18}{i.info()['recipe']:<12}{'yes' if i.vm else 'no':<4}"
                  f"{i.size / 2**20:>8.0f}M  {i.manifest.get('created', ''):<22}{i.digest}")
        return 0
    if args.image_command == "prune":
        keep: set[str] = set()
        if not args.all:
            from harness.image.build import host_mirror

            recipe = load_recipe(Path(args.recipe) if args.recipe else None, Path.cwd())
            recipe = recipe.with_mirror(recipe.mirror or host_mirror())
            keep = {recipe.key(), recipe.with_vm().key()}
        removed = 0
        for image in cache.list_images():
            if image.key not in keep:
                cache.remove(image)
                removed += 1
                print(f"removed {image.key} ({image.size >> 20} MiB)")
        print(f"{removed} image(s) removed")
        return 0
    if args.image_command == "verify":
        image = cache.resolve(args.key)
        digest = sha256_file(image.path)
        if digest != image.digest:
            print(f"image {image.key}: digest {digest} does not match {image.digest}")
            return 1
        print(f"image {image.key}: {digest} ok")
        return 0
    raise AssertionError(args.image_command)


def _terminal_progress(total: int, started: int, ready: int, failed: int) -> None:
    line = f"bringing up {total}: {started} started, {ready} ssh-ready"
    if failed:
        line += f", {failed} failed"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line)
        if ready + failed == total:
            sys.stderr.write("\n")
    elif ready + failed == total or (started == total and ready == 0):
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _up(args: argparse.Namespace) -> int:
    from harness.preflight import preflight_lab
    from harness.session import Session

    given = {o.name: getattr(args, o.name) for o in OPTIONS}
    cfg: LabConfig = build_config(given, Path.cwd())
    if len(cfg.guests) != 1:
        raise UserError("scalelab up takes one number of guests, not a sweep")
    image = preflight_lab(cfg, cfg.guests[0])  # bad input fails here, before anything exists
    session = Session(cfg, progress=_terminal_progress, image=image)
    session.warn_leftovers(print_fn=lambda m: print(m, file=sys.stderr))
    try:
        lab = session.lab_up(cfg.guests[0], roles=cfg.role_spec)
    except BaseException:
        session.finish()
        raise
    lab.keep()
    session.finish(render=False)
    run_dir = session.run_dir
    print(f"lab {session.run_id} is up: {len(lab.require_fleet().names)} guests, "
          f"{lab.bringup_seconds:.1f} s")
    print(f"run directory: {run_dir}/")
    first = lab.guests[0].name
    for role, names in lab.roles.members_of.items():
        print(f"role {role}: {', '.join(names[:4])}{' …' if len(names) > 4 else ''}")
    print(f"try: ssh -F {run_dir}/ssh_config {first} hostname")
    print(f"take it down with: scalelab down {session.run_id}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from harness.faultcli import end_windows
    from harness.runs import find_run, newest_kept_run

    if args.run:
        run = find_run(args.run)
        if run.owner_alive and not run.kept:
            pids = sorted({str(lab.state.header.get("pid")) for lab in run.labs
                           if lab.state.owner_alive})
            raise UserError(f"run {run.run_id} belongs to a running process (pid "
                            f"{', '.join(pids)}): stop it, it takes its labs down itself")
    else:
        found = newest_kept_run()
        if found is None:
            print("no run is kept up (`scalelab ls` lists what is here; `scalelab clean` "
                  "removes what dead runs left)")
            return 0
        run = found
    end_windows(run)  # faults made by hand and never ended end with the lab
    problems = run.take_down()
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    labs = ", ".join(lab.name for lab in run.labs if not lab.is_shard)
    print(f"run {run.run_id} is down ({len(run.labs)} lab journal(s): {labs})"
          + (" with problems" if problems else ""))
    return 1 if problems else 0


def _clean(args: argparse.Namespace) -> int:
    from harness.runs import list_runs, select

    if args.run:
        chosen = select(args.run)
        runs = [chosen] if chosen is not None else []
    else:
        runs = list_runs()
    cleaned = 0
    failed = 0
    for run in runs:
        if not args.all and not args.run and (run.owner_alive or run.kept):
            continue
        resources = sum(len(lab.state.resources) for lab in run.labs)
        problems = run.take_down()
        cleaned += 1
        status = "removed" if not problems else "left problems: " + "; ".join(problems)
        print(f"{run.run_id}: {resources} resources of {len(run.labs)} lab(s) {status}")
        failed += bool(problems)
    print(f"{cleaned} run(s) cleaned" if cleaned else "nothing to clean")
    return 1 if failed else 0


def _ls(args: argparse.Namespace) -> int:
    from harness.runs import list_runs

    runs = list_runs()
    if not runs:
        print("no labs on this host")
        return 0
    for run in runs:
        backend = run.labs[0].state.header.get("backend", "?")
        print(f"{run.run_id}  {backend:<7} {run.status:<17}{run.run_dir}")
        for lab in run.labs:
            names = lab.guest_names()
            span = f"{names[0]} … {names[-1]}" if len(names) > 1 else "".join(names)
            where = f" on {lab.state.header['lab_host']}" if lab.is_shard else ""
            print(f"    {lab.name:<16} {len(names):>5} guests  {span}{where}")
    return 0


def _top(args: argparse.Namespace) -> int:
    from harness.runs import find_run, newest_kept_run
    from harness.top import top_lines

    if args.interval <= 0:
        raise UserError(f"--interval {args.interval}: must be above 0")
    run = find_run(args.run) if args.run else newest_kept_run()
    if run is None:
        raise UserError("no run is kept up here (see `scalelab ls`)")
    print("\n".join(top_lines(run, args.interval)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.report import render_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory")
    out = render_report(run_dir, tz=args.tz, out_dir=Path(args.out) if args.out else None)
    print(f"report: {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from harness.report import compare_runs

    a, b = Path(args.run_a), Path(args.run_b)
    out = Path(args.out) if args.out else b
    result = compare_runs(a, b, out, threshold=args.threshold)
    print(result.text)
    print(f"comparison: {result.html_path}")
    if args.fail_on_regression and result.regressions:
        return 1
    return 0


def _fault(args: argparse.Namespace) -> int:
    from harness.faultcli import cli_fault

    return cli_fault(args)


def _sigterm(signum: int, frame: Any) -> None:
    # Turn SIGTERM into an exception so every `finally` and context manager runs.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    handlers = {
        "image": _image_command, "up": _up, "down": _down, "clean": _clean, "ls": _ls,
        "report": _report, "compare": _compare, "fault": _fault, "top": _top,
    }
    try:
        status = handlers[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not in the exit's flush
        return status
    except BrokenPipeError:
        # `scalelab ls | head -1`: the reader has what it wanted.  Stop quietly, as a tool
        # killed by SIGPIPE would (exit 141), and point stdout at /dev/null so the
        # interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except UserError as err:
        print(f"scalelab: error: {err}", file=sys.stderr)
        return 2
    except LabError as err:
        print(f"scalelab: lab error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scalelab: interrupted; everything this run made was taken down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
