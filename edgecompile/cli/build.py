"""``edgecompile build``: a model compiled into a library for a board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgecompile.cli.options import (
    batch_option,
    cc_option,
    check_writable_dir,
    input_size_option,
    json_option,
    print_json,
    records_option,
    schedules_option,
    seed_option,
    target_option,
    weights_option,
)
from edgecompile.errors import EdgecompileError
from edgecompile.quantization.checks import check_int8_build

#: Endings of what ``tvmc compile -o`` writes: ``build -o sq.so`` would make a folder sq.so/.
_FILE_SUFFIXES = (".so", ".tar", ".tar.gz", ".tgz", ".dylib", ".dll", ".o")


def _refuse_file_name(output_dir: str) -> str:
    if output_dir.endswith(_FILE_SUFFIXES) and not Path(output_dir).is_dir():
        raise EdgecompileError(
            f"build -o is the folder the artifact goes in, not the library file: {output_dir!r}",
            "pass a folder: -o build writes build/<model>-<target>/<model>.so and manifest.json, "
            "and --tar also packs them as one .tar.gz",
        )
    return output_dir


def _refuse_bundle_without_runtime(target: str) -> None:
    """``--bundle`` for a target the native runtime is not built for: said before the build."""
    from edgecompile.targets import resolve_target

    triple = resolve_target(target).triple
    if not triple.startswith(("aarch64", "arm")):
        raise EdgecompileError(
            f"--bundle needs an aarch64 or armv7 target; {target!r} compiles for {triple}",
            "pick a board preset (e.g. --target rpi4 or rpi3-armv7), or drop --bundle",
        )


@click.command("build")
@click.argument("model")
@target_option
@click.option(
    "-o", "--output-dir", default="build", show_default=True, type=click.Path(file_okay=False),
    callback=lambda _ctx, _param, value: _refuse_file_name(value),
    help="The folder to write <model>-<target>/ in (a folder, unlike `export -o`).",
)  # fmt: skip
@batch_option
@input_size_option
@weights_option
@seed_option
@cc_option
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime check of host libraries.")
@click.option(
    "--no-custom-schedules", is_flag=True,
    help="Compile every op with TVM's default lowering (plain loops) instead of our schedules.",
)  # fmt: skip
@records_option
@click.option("--no-records", is_flag=True, help="Ignore tuning records: our schedules only.")
@schedules_option
@click.option(
    "--explain", is_flag=True,
    help="After the build, print per layer the schedule that ran and why a rule fell back.",
)  # fmt: skip
@click.option(
    "--int8", is_flag=True,
    help="Quantize MODEL to int8 first (as `edgecompile quantize` does), print its accuracy "
    "against fp32, then compile the integer model into <model>-int8-<target>/.",
)  # fmt: skip
@click.option(
    "--calibration", type=click.Path(), metavar="DIR",
    help="With --int8: a folder of JPEG/PNG images to calibrate on (every 5th held out for the "
    "accuracy report) [scikit-image's sample photographs].",
)  # fmt: skip
@click.option("--tar", "pack", is_flag=True, help="Also pack the artifact as <dir>.tar.gz.")
@click.option(
    "--bundle", "make_bundle", is_flag=True,
    help="Also write <dir>-bundle/: the library, manifest, native TVM runtime and "
    "edgecompile-runner, to run on an aarch64/armv7 board without Python.",
)  # fmt: skip
@json_option
def build_command(
    model: str,
    target: str,
    output_dir: str,
    batch: int,
    input_size: str | None,
    weights: str | None,
    seed: int,
    cc: str | None,
    no_verify: bool,
    no_custom_schedules: bool,
    records: str | None,
    no_records: bool,
    schedules_dir: str | None,
    explain: bool,
    int8: bool,
    calibration: str | None,
    pack: bool,
    make_bundle: bool,
    as_json: bool,
) -> None:
    """Compile MODEL into a shared library for a board.

    MODEL is a zoo name (`edgecompile models`), an ONNX file (model.onnx), or
    pkg.module:function returning a torch nn.Module. The pipeline: torch -> static ONNX ->
    TVM Relax -> compile for the target's CPU -> link with the target's toolchain (the bundled
    zig cross toolchain by default). Libraries built for this machine are checked against
    ONNX Runtime on a seeded input before the build counts as done.

    \b
    Tuning records (`edgecompile tune`) for the target, in --records DIR or the cache, are
    applied when there are any: per kernel, the fastest measured schedule -- tuned or ours.

    --schedules DIR adds schedules of your own: every .py file in DIR is imported and the rules
    it registers (edgecompile.schedules.user) are tried before ours on each kernel. --explain
    prints, per layer, who scheduled it (ours / user / records / tvm-default) and why a rule
    fell back; --json prints the manifest, whose `schedules` hold the same.

    --int8 quantizes MODEL (static, post-training: int8 weights per output channel, uint8
    activations calibrated on --calibration DIR or scikit-image's photographs), prints the
    int8 model's accuracy against fp32 (top-1 agreement, cosine, SQNR; also in the manifest),
    and compiles its convs into integer kernels; a host build is checked against ONNX Runtime
    running the same int8 model, within 2 output quantization steps. --explain then says per
    layer whether it runs in int8 or stays fp32, and why.

    \b
    Writes OUTPUT_DIR/<model>-<target>/ (with --int8: <model>-int8-<target>/, beside the fp32
    build) with <model>.so and manifest.json, atomically.
    Examples:
      edgecompile build shufflenet_v1 --target rpi4
      edgecompile build mobilenet_v2 --target host --input-size 160
      edgecompile build my_model.onnx --target rpi4-armv7 --batch 4
      edgecompile build shufflenet_v1 --target rpi3-armv7 --bundle
      edgecompile build espnet_v2 --schedules examples/schedules --explain
      edgecompile build mobilenet_v2 --int8 --calibration photos/ --target rpi5
      edgecompile build squeezenet1_1 --target 'llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72'
    """
    check_writable_dir(output_dir, "-o")  # before the export and compile, not after them
    # A quantized ONNX file, --calibration without --int8, a folder without images: up front.
    check_int8_build(model, int8, calibration)
    if make_bundle:
        _refuse_bundle_without_runtime(target)
    if not model.endswith(".onnx") and ":" not in model:  # a zoo name: known before torch loads
        from edgecompile.zoo import resolve_name

        zoo_name = resolve_name(model)
        if zoo_name != model:  # the artifact's folder is named after the zoo's model
            click.echo(f"note: {model} is the zoo's {zoo_name}", err=True)
    from edgecompile.artifact import pack_artifact
    from edgecompile.builder import BUILD_STAGES, build
    from edgecompile.progress import Progress

    stages = BUILD_STAGES
    if int8:
        from edgecompile.quantization.pipeline import QUANTIZE_STAGES

        stages += QUANTIZE_STAGES

    result = build(
        model,
        target,
        output_dir=output_dir,
        batch=batch,
        input_size=input_size,
        weights=weights,
        seed=seed,
        cc=cc,
        verify=not no_verify,
        custom_schedules=not no_custom_schedules,
        records=False if no_records else records,
        progress=Progress(stages),
        schedules_dir=schedules_dir,
        int8=int8,
        calibration=calibration,
    )
    artifact = result.artifact
    damaged = (artifact.manifest.records or {}).get("damaged")
    if damaged:  # on stderr, so --json stays one JSON document
        click.echo(f"warning: {damaged}", err=True)
    # --no-custom-schedules asked for TVM's default: nothing fell back.
    warnings = fallback_warnings(artifact.manifest.schedules, artifact.manifest.extra)
    for line in [] if no_custom_schedules else warnings:
        click.echo(line, err=True)
    archive = pack_artifact(artifact) if pack else None
    bundled = None
    if make_bundle:
        from edgecompile.native.bundle import bundle

        bundled = bundle(artifact, progress=Progress(1))
    if as_json:
        payload = artifact.manifest.to_dict()
        payload["directory"] = str(artifact.directory)
        payload["archive"] = str(archive) if archive else None
        payload["bundle"] = str(bundled) if bundled else None
        print_json(payload)
        return
    manifest = artifact.manifest
    if result.quantization is not None:
        from edgecompile.quantization.accuracy import format_accuracy

        accuracy = result.quantization.accuracy
        click.echo(f"quantized to int8, calibrated on {accuracy.images_from}:")
        click.echo(format_accuracy(accuracy))
    click.echo(f"built {artifact.library} ({manifest.arch}, {manifest.weights})")
    verification = manifest.verification or {}
    if verification.get("status") == "passed":
        error = verification["max_relative_error"]
        if "max_output_steps" in verification:  # an int8 build: ORT's integer kernels
            steps = verification["max_output_steps"]
            click.echo(f"verified against ONNX Runtime: {steps:.1f} output quantization steps")
        else:
            click.echo(f"verified against ONNX Runtime: max relative error {error:.2e}")
    else:
        click.echo(f"not verified here: {verification.get('reason', 'skipped')}")
    if manifest.records:
        tuned = len(manifest.records["kernels_from_records"])
        click.echo(f"applied tuning records to {tuned} kernels ({manifest.records['store']})")
    if manifest.user_schedules:
        used = sum(rule["kernels"] for rule in manifest.user_schedules["rules"])
        plural = "" if used == 1 else "s"
        directory = manifest.user_schedules["dir"]
        click.echo(f"user schedules scheduled {used} kernel{plural} ({directory})")
    if archive:
        click.echo(f"packed {archive}")
    if bundled:
        click.echo(f"bundled {bundled} (on the board: ./edgecompile-runner . --repeat 10)")
    if explain:
        from edgecompile.explain import format_explain
        from edgecompile.schedules.coverage import rule_errors

        click.echo("")
        # An int8 build whose pipeline failed as a whole has no per-op int8 verdicts: say so.
        int8_build = "int8" in manifest.extra or "max_output_steps" in verification
        click.echo(
            format_explain(
                manifest.schedules,
                int8=True if int8_build else None,
                rule_errors=rule_errors(manifest.extra),
            )
        )


def fallback_warnings(
    records: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> list[str]:
    """One ``warning:`` line per op that did not get the schedule it should have (the manifest
    keeps the same under ``fallback``): one for all when our pipeline itself failed (TVM's
    default lowering built the model: many times slower); one for all the kernels a rule of
    ours raised on (``extra``'s ``rule_errors``: a bug, each kernel listed by ``--explain``);
    else each op a rule of ours claims that went to TVM's default for no reason the design
    accepts, and each op a user rule gave up on."""
    from edgecompile.schedules.coverage import (
        NO_REASON,
        missed_schedules,
        op_class,
        rule_errors,
    )
    from edgecompile.schedules.pipeline import PIPELINE_FAILED, RULE_ERROR
    from edgecompile.schedules.user import USER_PREFIX

    failed = [r for r in records if str(r.get("fallback", "")).startswith(PIPELINE_FAILED)]
    if failed:
        return [
            f"warning: all {len(records)} heavy ops fell back to TVM's default lowering "
            f"(slower): {failed[0]['fallback']}"
        ]
    errors = rule_errors(extra)
    lines = []
    if errors:  # one line: the kernels are --explain's, the bug is ours to report
        first = errors[0]
        plural = "" if len(errors) == 1 else "s"
        lines.append(
            f"warning: a schedule rule raised on {len(errors)} kernel{plural}, which fell back "
            f"to TVM's default lowering (slower; first: {first['rule']} on {first['kernel']}: "
            f"{first['error']}); --explain lists them, please report it"
        )
    missed = {fallback.index for fallback in missed_schedules(records)}
    return lines + [
        f"warning: op #{r['index']} ({op_class(r)}) fell back to {r['schedule']}: "
        f"{r.get('fallback', NO_REASON)}"
        for r in records
        if (r["index"] in missed or USER_PREFIX in str(r.get("fallback", "")))
        and f"{RULE_ERROR} in " not in str(r.get("fallback", ""))
    ]
