"""The ``sparkzoo`` command and the spark-submit entry points share this module.

Every command takes ``-c/--config`` (the experiment YAML; ``--conf`` is its old name, kept as an alias
because spark-submit's ``--conf`` means a ``key=value`` Spark property), repeatable ``--set key=value``,
``-q``/``-v`` and, for the stages, ``--dry-run``. A user mistake (a ``SparkzooError``) prints one line and
exits 2; an unexpected error keeps its traceback and exits 1, so a scheduler can tell "fix your input"
from "file a bug".

The terminal shows sparkzoo's own lines only: one progress display and one summary per stage, warnings
and errors. Spark's JVM, Horovod's forwarded rank output, MLflow's notes and Python warnings go to
``<workspace>/logs/<command>-<time>.log`` (``pipelines/console.py``); ``-v`` shows everything again.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from typing import Callable, Sequence

from sparkzoo.pipelines.errors import SparkzooError

DEFAULT_CONF = "conf/fashion_mnist_cnn.yaml"


def _setup_logging(console_level: int = logging.INFO) -> None:
    """Our own messages on the terminal from ``console_level``; libraries (Horovod's rendezvous, MLflow,
    py4j) only when they warn, and then into the log file once a stage captures the output."""
    from sparkzoo.pipelines.console import ConsoleHandler

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ours = logging.getLogger("sparkzoo")
    if not ours.handlers:
        handler = ConsoleHandler()
        handler.setFormatter(logging.Formatter("[sparkzoo] %(message)s"))
        handler.addFilter(_MaskSecrets())
        ours.addHandler(handler)
    ours.handlers[0].setLevel(console_level)
    ours.setLevel(min(console_level, logging.INFO))
    ours.propagate = False
    for handler in logging.getLogger().handlers:   # the libraries' lines (MLflow prints tracking URIs)
        if not any(isinstance(f, _MaskSecrets) for f in handler.filters):
            handler.addFilter(_MaskSecrets())


class _MaskSecrets(logging.Filter):
    """A log line never shows the password of a ``scheme://user:password@host`` URI."""

    def filter(self, record: logging.LogRecord) -> bool:
        from sparkzoo.pipelines.secrets import mask_text

        text = record.getMessage()
        masked = mask_text(text)
        if masked != text:
            record.msg, record.args = masked, ()
        return True


CAPTURED = {"prepare", "replicate", "train", "score", "promote", "run", "baseline"}   # stages that start Spark


def _load(args):
    """The merged, validated config; for a stage, also the moment its console output is captured."""
    from sparkzoo.pipelines import config, console, paths
    from sparkzoo.pipelines.session import launched_by_spark_submit

    if getattr(args, "conf_alias", False):
        logging.getLogger("sparkzoo.cli").warning(
            "--conf is deprecated for the experiment file: use -c/--config (spark-submit's --conf means a Spark "
            "property key=value)")
    exp = config.load(args.conf, args.set)
    if args.command in CAPTURED and not getattr(args, "dry_run", False) and not launched_by_spark_submit():
        # under spark-submit the operator's own logging applies; a console run keeps its terminal clean
        console.quiet_env(local_master=exp.spark.master.startswith("local"))
        console.capture(console.log_dir(paths.workspace(exp)), args.command)
    return exp


def _say(text: str) -> None:
    """A command's result: on the real stdout (and in the log file) whatever the capture did."""
    from sparkzoo.pipelines import console

    console.say(text)


def _spark_progress(label: str):
    from sparkzoo.pipelines.display import SparkProgress

    return SparkProgress(label)


def _dry_run(args) -> bool:
    """Print the plan instead of running, when asked."""
    if not getattr(args, "dry_run", False):
        return False
    from sparkzoo.pipelines import plan

    _say(plan.describe(args.command, _load(args)))
    return True


def cmd_prepare(args) -> int:
    from sparkzoo.pipelines import prepare

    if _dry_run(args):
        return 0
    exp = _load(args)
    with _spark_progress("prepare"):
        r = prepare.run(exp)
    state = "already prepared (nothing to do)" if r.skipped else f"prepared in {r.seconds:.1f}s ({r.rows_per_second:.0f} rows/s)"
    _say(f"dataset {exp.data.dataset} v{r.version}: {state}\n"
          f"  rows: train={r.rows['train']} val={r.rows['val']} test={r.rows['test']}; "
          f"input records={r.input_records}, quarantined={r.quarantined}\n  path: {r.path}")
    return 0


def cmd_replicate(args) -> int:
    from sparkzoo.pipelines.prepare import replicate

    if _dry_run(args):
        return 0
    exp = _load(args)
    with _spark_progress("replicate"):
        r = replicate.run(exp)
    state = "already replicated (nothing to do)" if r.skipped else \
        f"replicated in {r.seconds:.1f}s ({sum(r.rows.values()) / max(r.seconds, 1e-9):.0f} rows/s)"
    _say(f"dataset {r.manifest['dataset']} v{r.version}: {state}\n"
          f"  rows: train={r.rows['train']} val={r.rows['val']} test={r.rows['test']} "
          f"(from {r.input_records} prepared rows x {exp.replicate.factor})\n  path: {r.path}\n"
          f"  train on it with: --set data.dataset={r.manifest['dataset']} --set data.version={r.version}")
    return 0


def cmd_train(args) -> int:
    from sparkzoo.pipelines import train

    if getattr(args, "fresh", False):
        args.set = [*args.set, "train.resume=never"]
    if _dry_run(args):
        return 0
    exp = _load(args)
    r = train.run(exp)
    _say(_train_summary(r))
    return 0


def _train_summary(r) -> str:
    acc, ece = r.test.get("accuracy"), r.test.get("ece")
    calibration = f", calibration error (ECE) {ece:.4f}" if ece is not None else ""
    others = ", ".join(f"{k} {v:.4f}" for k, v in r.test.items() if k != "loss")
    return (f"trained {r.model_name}: test accuracy {acc:.4f}{calibration}\n" if acc is not None
            else f"trained {r.model_name}: test {others}\n") + (
        f"  training time {r.train_seconds:.1f}s, {r.samples_per_second:.0f} samples/s, {r.parameters:,} parameters\n"
        f"  MLflow run {r.run_id}; registered model {r.model_name} version {r.model_version} "
        f"aliases {', '.join(r.aliases)}\n  {r.promotion}") + "".join(
        f"\n  restart {x.number}: {x.reason}; went on with {x.world_size} rank{'s' if x.world_size != 1 else ''}"
        for x in getattr(r, "restarts", []))


def cmd_score(args) -> int:
    from sparkzoo.pipelines import score

    if getattr(args, "incremental", False):
        args.set = [*args.set, "score.incremental=true"]
    if _dry_run(args):
        return 0
    from sparkzoo.pipelines.phases import Phases, since_process_start

    exp = _load(args)
    phase = Phases({"start (python, imports, config)": since_process_start()})
    with _spark_progress("score"):
        r = score.run(exp, phase=phase)
    _say(_score_summary(r))
    return 0


def _score_summary(r) -> str:
    acc = f", accuracy {r.accuracy:.4f}" if r.accuracy is not None else ""
    rate = r.input_rows / r.seconds if r.seconds else 0.0
    skipped = f"; already scored (incremental) {r.skipped_rows}" if r.skipped_rows else ""
    path = f" (inference path {r.optimize})" if r.optimize != "none" else ""
    return (f"scored {r.scored_rows} rows with {r.model_name} v{r.model_version}{path} in {r.seconds:.1f}s "
            f"({rate:.0f} rows/s){acc}; rejected {r.rejected_rows}{skipped}\n"
            f"  predictions: {r.output}/model_version={r.model_version}/run_date={r.run_date}\n  rejects: {r.rejects}")


def cmd_promote(args) -> int:
    """Candidate vs champion in Spark; the champion alias moves only if the candidate wins."""
    from sparkzoo.pipelines import promote

    if _dry_run(args):
        return 0
    exp = _load(args)
    with _spark_progress("promote"):
        r = promote.rollback(exp, args.rollback_to) if args.rollback_to is not None else promote.run(exp)
    _say(f"{exp.model_name}: {r.decision}; champion is v{r.champion_after}\n  {r.reason}\n"
          f"  decision logged in MLflow run {r.run_id} and as tags on the version")
    return 0


def cmd_lineage(args) -> int:
    """Where one prediction came from: partition, model version, MLflow run, dataset, source file + hash."""
    from sparkzoo.pipelines import lineage

    exp = _load(args)
    chains = lineage.trace(exp, args.id) if args.id is not None else lineage.trace_row(exp, args.row)
    print(lineage.print_json(chains) if args.json else lineage.render(chains))
    return 0


def cmd_run(args) -> int:
    """prepare -> train -> score in one go, then the summary a new user wants to see."""
    from sparkzoo.pipelines import prepare, score, train

    if _dry_run(args):
        return 0
    started = time.time()
    exp = _load(args)
    with _spark_progress("prepare"):
        p = prepare.run(exp)
    t = train.run(exp)
    with _spark_progress("score"):
        s = score.run(exp)
    summary = run_summary(args.conf, exp, p, t, s)
    _say(summary)
    _keep_run_figures(exp, args.conf, summary, p, t, s, time.time() - started)
    return 0


def _keep_run_figures(exp, conf: str | None, summary: str, p, t, s, wall: float) -> None:
    """``<workspace>/logs/run-summary.json``: what scripts/readme_figures.py writes into the README."""
    import json

    from sparkzoo.pipelines import console, paths

    if paths.is_uri(paths.workspace(exp)):
        return
    figures = {"conf": conf, "summary": summary, "wall_seconds": round(wall, 1),
               "prepare_seconds": round(p.seconds, 1), "prepare_reused": p.skipped,
               "train_seconds": round(t.train_seconds, 1), "train_wall_seconds": round(t.wall_seconds, 1),
               "epochs": len(t.history), "score_seconds": round(s.seconds, 1),
               "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               "load_average": round(os.getloadavg()[0], 1)}   # a busy machine explains slow figures
    target = console.log_dir(paths.workspace(exp)) / "run-summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(figures, indent=1) + "\n")


def run_summary(conf: str | None, exp, p, t, s) -> str:
    """The block ``sparkzoo run`` ends with; scripts/readme_figures.py copies it into the README."""
    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.secrets import mask_text

    ui = f"sparkzoo ui -c {conf}" if conf else "sparkzoo ui"
    return "\n".join([
        "=" * 72, "sparkzoo run: done", "=" * 72,
        f"prepared rows: train={p.rows['train']} val={p.rows['val']} test={p.rows['test']} (quarantined {p.quarantined})"
        f"{' [reused]' if p.skipped else f' in {p.seconds:.1f}s ({p.rows_per_second:.0f} rows/s)'}",
        _train_summary(t), _score_summary(s),
        f"MLflow store: {mask_text(track.tracking_uri(exp))}\nopen the MLflow UI: {ui}   (or: make ui)"])


def cmd_baseline(args) -> int:
    """The classical model beside this config's family, on the same prepared split, logged to MLflow."""
    from sparkzoo.pipelines import baselines

    if _dry_run(args):
        return 0
    exp = _load(args)
    with _spark_progress("baseline"):
        r = baselines.run(exp)
    figures = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items() if k.startswith("test_"))
    _say(f"{r.kind} baseline for {exp.model.name} on {exp.data.dataset}: {figures} ({r.seconds:.1f}s)\n"
          f"  MLflow run {r.run_id} in experiment {exp.mlflow.experiment}")
    if r.model_probe:
        _say(f"  {r.model_probe['model']} v{r.model_probe['version']} code, same probe: test_probe_accuracy "
              f"{r.model_probe['test_probe_accuracy']:.4f} (logged to its run {r.model_probe['run_id']})")
    return 0


def cmd_config(args) -> int:
    """Print the merged, validated config (defaults + file + --set) as YAML: what a stage would run with."""
    import yaml

    from sparkzoo.pipelines.secrets import mask_text

    exp = _load(args)
    tree = exp.to_dict()
    where = tree.pop("source_file", "")
    _say(f"# sparkzoo config: {mask_text(where)}\n" + mask_text(yaml.safe_dump(tree, sort_keys=False).rstrip()))
    return 0


def cmd_ui(args) -> int:
    from sparkzoo.pipelines import track

    exp = _load(args)
    host = args.host or exp.ui.host
    port = args.port or exp.ui.port
    track.experiment_id(exp)   # creates the store if it is new
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", track.tracking_uri(exp),
           "--default-artifact-root", "file://" + track.artifact_location(exp), "--host", host, "--port", str(port),
           "--workers", "1"]
    # mlflow 3.x also starts seven huey job consumers for GenAI features (prompt optimisation, trace
    # roll-ups) that sparkzoo never uses and that keep 2 cores busy; off unless the user asks for them.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"MLflow UI on http://{host}:{port}  ({' '.join(shlex.quote(c) for c in cmd)})", flush=True)
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def cmd_doctor(args) -> int:
    """Check the machine for what this config needs; exit 2 naming what is missing, 0 when ready."""
    from sparkzoo.pipelines import config, doctor
    from sparkzoo.pipelines.errors import ConfigError, SetupError

    failed: list[str] = []
    try:
        exp = _load(args)
        print(f"sparkzoo doctor: checking this machine for {exp.source_file}", flush=True)
    except ConfigError as exc:
        print(f"  {'MISSING':<8} {'config':<15} {exc}", flush=True)
        failed.append("config")
        exp = config.load(None)
        print(f"  {'':<8} {'':<15} (the checks below use conf/defaults.yaml)", flush=True)
    checks = doctor.run_checks(exp, args.min_free_gb, progress=lambda c: print(doctor.format_check(c), flush=True))
    failed += [c.name for c in checks if c.required and not c.ok]
    if failed:
        raise SetupError(f"doctor: {len(failed)} required check(s) failed: {', '.join(failed)}; "
                         f"apply the fixes printed above and run sparkzoo doctor again")
    print("sparkzoo doctor: ready (every required check passed)")
    return 0


def cmd_init(args) -> int:
    """Copy a shipped example experiment into the current folder, to edit and pass with -c."""
    import shutil
    from pathlib import Path

    from sparkzoo.pipelines import config
    from sparkzoo.pipelines.errors import ConfigError

    if args.list or not args.example:
        print("shipped example experiments (sparkzoo init NAME copies one here):")
        for name in config.examples():
            print(f"  {name}")
        return 0
    source = config.find_experiment(args.example)
    target = Path(args.output or f"{source.stem}.yaml")
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists already; pass --force to overwrite it or --output to pick another name")
    shutil.copyfile(source, target)
    print(f"wrote {target} (from {source.stem}; every key it does not set comes from sparkzoo's defaults)\n"
          f"  run it:  sparkzoo run -c {target}\n"
          f"  see all keys: {config.DEFAULTS_FILE}")
    return 0


def cmd_job_file(args) -> int:
    """Print the spark-submit entry file of a stage inside the installed package.

    Why: spark-submit takes a Python file, not a module; a user of the wheel has no jobs/ folder, so
    ``spark-submit ... "$(sparkzoo job-file train)" -c x.yaml`` finds the one in site-packages.
    """
    from pathlib import Path

    print(Path(__file__).resolve().parent / f"{args.stage}.py")
    return 0


def version() -> str:
    """The installed distribution's version (the wheel's metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("sparkzoo")
    except PackageNotFoundError:
        from sparkzoo import __version__

        return __version__


COMMANDS: dict[str, tuple[Callable, str]] = {
    "prepare": (cmd_prepare, "raw files -> versioned Parquet dataset + manifest + quarantine (Spark)"),
    "replicate": (cmd_replicate, "grow a prepared dataset N-fold with seeded random augmentation (Spark)"),
    "train": (cmd_train, "Horovod training over the prepared Parquet; logs and registers in MLflow"),
    "score": (cmd_score, "batch scoring of a Parquet table with a registered model (Spark)"),
    "promote": (cmd_promote, "compare candidate and champion in Spark; move champion only if the candidate wins "
                             "(--rollback-to N moves it back)"),
    "run": (cmd_run, "prepare, train and score in a row, then print a summary"),
    "baseline": (cmd_baseline, "the classical baseline for this config's family on the same split (Spark ML), "
                               "logged beside the nets"),
    "ui": (cmd_ui, "start the MLflow UI on this experiment's store (127.0.0.1 by default)"),
    "doctor": (cmd_doctor, "check Java, Spark, Horovod (Gloo + torch), petastorm, the MLflow store and free disk"),
    "config": (cmd_config, "print the merged, validated config (defaults + file + --set) as YAML"),
    "lineage": (cmd_lineage, "where a prediction came from: partition -> model version -> MLflow run -> dataset "
                             "-> source file and its sha256 (--id ID or --row PATH[#N], --json)"),
}
STAGES = ("prepare", "replicate", "train", "score", "promote", "run", "baseline")   # --dry-run applies


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"sparkzoo: error: {message} (see --help)\n")


def _extra_args(name: str, p: argparse.ArgumentParser) -> None:
    """Flags beyond --conf/--set, shared by the subcommand and its spark-submit entry point."""
    if name == "ui":
        p.add_argument("--host", help="bind address (default from ui.host: 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default from ui.port: 5000)")
    elif name == "score":
        p.add_argument("--incremental", action="store_true",
                       help="score only ids this model version has not scored on an earlier run date "
                            "(same as --set score.incremental=true)")
    elif name == "promote":
        p.add_argument("--rollback-to", type=int, metavar="VERSION",
                       help="move the champion alias back to this version instead of evaluating (logged)")
    elif name == "train":
        p.add_argument("--fresh", action="store_true",
                       help="start a new MLflow run even if an unfinished run of this config could be resumed "
                            "(same as --set train.resume=never)")
    elif name == "lineage":
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", help="the prediction's id (the id column of the scoring output)")
        which.add_argument("--row", metavar="PATH[#N]",
                           help="one row of a predictions Parquet file or partition folder "
                                "(<score.output>/model_version=V/run_date=D): row N counting from 0, the "
                                "folder's files in name order; no #N: the first row")
        p.add_argument("--json", action="store_true", help="the chain as JSON, for machines")
    if name in STAGES:
        p.add_argument("--dry-run", action="store_true",
                       help="print what this would read, write and launch, then stop (starts nothing)")
    if name == "doctor":
        p.add_argument("--min-free-gb", type=_positive_float, default=2.0, metavar="GB",
                       help="free disk space the workspace needs (default: 2)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="sparkzoo" if only is None else f"spark-submit jobs/{only}.py",
                     description="sparkzoo: prepare with Spark, train with Horovod, track with MLflow, score with Spark.")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", dest="conf", default=DEFAULT_CONF, metavar="YAML",
                       help=f"experiment YAML, a path or a shipped example's name (default: {DEFAULT_CONF})")
        p.add_argument("--conf", dest="conf", action=_ConfAlias, metavar="YAML",
                       help="deprecated alias of -c/--config (in spark-submit, --conf is a Spark property key=value)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set train.epochs=5 (repeatable)")
        p.add_argument("-q", "--quiet", action="count", default=0,
                       help="summaries and errors only: no progress display, no warnings")
        p.add_argument("-v", "--verbose", action="count", default=0,
                       help="show everything again: our INFO lines and every library's output (-vv: DEBUG); "
                            "without it they go to <workspace>/logs/")

    if only is not None:
        common(parser)
        _extra_args(only, parser)
        parser.set_defaults(func=COMMANDS[only][0], command=only)
        return parser
    parser.add_argument("--version", action="version", version=f"sparkzoo {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    init = sub.add_parser("init", help="copy a shipped example experiment here to edit (--list shows them)",
                          description="copy a shipped example experiment here to edit (--list shows them)")
    init.add_argument("example", nargs="?", help="example name, e.g. fashion_mnist_cnn (none: list them)")
    init.add_argument("--list", action="store_true", help="list the shipped examples")
    init.add_argument("--output", "-o", help="file to write (default: NAME.yaml in this folder)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)
    job = sub.add_parser("job-file", help="print the spark-submit entry file of a stage (spark-submit \"$(sparkzoo "
                                          "job-file train)\" -c x.yaml)")
    job.add_argument("stage", choices=sorted(set(COMMANDS) - {"ui", "doctor", "config"}))
    job.set_defaults(func=cmd_job_file)
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        common(p)
        _extra_args(name, p)
        p.set_defaults(func=func)
    return parser


class _ConfAlias(argparse.Action):
    """``--conf X`` still works as ``-c X``; the run says once that the name is on its way out."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.conf_alias = True


def _levels(args) -> tuple[int, int]:
    """(verbosity, console log level): -q shows errors only, default warnings, -v INFO, -vv DEBUG."""
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(max(-1, min(verbosity, 2)), logging.DEBUG)
    from sparkzoo.pipelines.session import launched_by_spark_submit

    captured = getattr(args, "command", None) in CAPTURED and not launched_by_spark_submit()
    if not captured and verbosity == 0:
        level = logging.INFO   # nothing is captured: INFO lines have no log file to go to
    return verbosity, level


def main(argv: Sequence[str] | None = None, only: str | None = None) -> int:
    from sparkzoo.pipelines import console

    args = build_parser(only).parse_args(argv)
    verbosity, level = _levels(args)
    _setup_logging(level)
    try:
        with console.session(verbosity):
            code = int(args.func(args) or 0)
            if console.log_path() and verbosity >= 0:
                print(f"log: {console.log_path()}", file=console.err(), flush=True)
            return code
    except SparkzooError as exc:
        from sparkzoo.pipelines.secrets import mask_text

        print(f"sparkzoo: error: {mask_text(str(exc))}", file=sys.stderr)
        if console.log_path():
            print(f"  full log: {console.log_path()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sparkzoo: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if console.log_path():   # the traceback follows on the terminal; what led to it is in the log
            print(f"sparkzoo: unexpected error; full log: {console.log_path()}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
