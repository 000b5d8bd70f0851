"""BrainFMSceneLib's copies of the engine's constants equal the engine's.

The scene library imports before ``brainfm`` is installed (the install step runs first), so it
cannot import the engine's constants: it re-types them. With both importable, every copy is
compared here with the engine's value, or checked by giving what the library produces to the
engine's own code (command-line parser, progress reporter, model store): the progress line protocol,
the ``run`` and ``models add`` options, the task names and output keys, the model-store keys,
model ids and the download page, the file formats, the structure-volume table, the version pin and
the torch requirement. The error classes and exit codes are compared in ``test_lib_imports.py``
(with and without ``brainfm``). The task modules' output keys and task names are read from their
files (they need the Slicer application to import).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import io
from typing import Any, Dict, List

import pytest

brainfm = pytest.importorskip("brainfm", reason="the engine (BrainFMCore) is not installed")

from BrainFMSceneLib import __version__ as LIB_VERSION  # noqa: E402
from BrainFMSceneLib import (  # noqa: E402
    finetune_job, install, model_add, parameters, process, registry, results, table_nodes, training_pairs)
from BrainFMSceneLib._errors import CancelledError, InputError  # noqa: E402
from slicer_static_helpers import (  # noqa: E402
    MODULE_SUPPORT,
    SCENE_LIB,
    TASK_MODULES,
    find_class,
    literal_assignment,
    module_py,
    parse_py,
)

#: where the engine keeps the progress line protocol (format and parse) and its command-line reporter
PROTOCOL_MODULE = "brainfm.progress_protocol"
REPORTER_MODULE = "brainfm.cli.progress"


def engine_attr(name: str, *modules: str) -> Any:
    """``name`` from the first of the engine ``modules`` that defines it; fails when none does."""
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    pytest.fail(f"none of the engine modules {modules} defines {name}")


def engine_parse(argv: List[str]) -> argparse.Namespace:
    """``argv`` parsed by the ``brainfm`` command's own parser (fails on an option it does not know)."""
    from brainfm.cli.main import build_parser

    try:
        return build_parser(argv[0]).parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing an argument
        pytest.fail(f"the brainfm command refuses {argv} (exit {exc.code})")


def engine_option(command: str, option: str) -> argparse.Action:
    """The argparse action of ``brainfm <command> <option>``."""
    from brainfm.cli.main import build_parser

    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if option in a.option_strings)


def engine_outputs() -> Dict[str, str]:
    """Output key -> task, over every task of the engine."""
    from brainfm.tasks import TASKS

    return {key: name for name, spec in TASKS.items() for key in spec.outputs}


# ------------------------------------------------------------------------- progress line protocol
def test_progress_and_error_lines_are_the_engines():
    assert process.PROGRESS_PREFIX == engine_attr("PROGRESS_PREFIX", PROTOCOL_MODULE)
    assert process.ERROR_PREFIX == engine_attr("ERROR_PREFIX", PROTOCOL_MODULE)
    assert process.CANCELLED_EXIT_CODE == CancelledError.exit_code == 130
    # what the engine prints in machine mode is what the library reads
    reporter = engine_attr("ProgressReporter", REPORTER_MODULE)
    buf = io.StringIO()
    report = reporter("machine", stream=buf)
    report(0.25, "reading  scan.nii")
    report(0.125, "late")  # never backwards
    report(1.0, "")
    report.close()
    events = [process.parse_line(line) for line in buf.getvalue().splitlines()]
    assert events == [process.ProgressEvent(0.25, "reading scan.nii"), process.ProgressEvent(0.25, "late"),
                      process.ProgressEvent(1.0, "")]
    error_line = engine_attr("format_error_line", PROTOCOL_MODULE)
    line = error_line(InputError("'head.nii' is 2D; BrainFM needs a 3D volume"))
    assert process.parse_line(line) == ("InputError", "'head.nii' is 2D; BrainFM needs a 3D volume")
    # and the other way round: the library's example line is one the engine reads
    parse_progress_line = engine_attr("parse_progress_line", PROTOCOL_MODULE)
    assert parse_progress_line("BRAINFM_PROGRESS 0.5000 half") == (0.5, "half")


@pytest.mark.parametrize("fraction, message", [(0.0, "start"), (0.4242, "predicting tile 3/8"), (1.0, ""),
                                                (0.5, "two  spaces\nand a newline"), (0.123456, "rounded")])
def test_progress_line_format_is_the_libraries(fraction, message):
    """The engine's progress lines are exactly the library's protocol: the prefix, the fraction with
    4 decimals, the message on one line; the library and the engine read each line alike."""
    format_progress_line = engine_attr("format_progress_line", PROTOCOL_MODULE)
    parse_progress_line = engine_attr("parse_progress_line", PROTOCOL_MODULE)
    line = format_progress_line(fraction, message)
    one_line = " ".join(message.split())
    assert line == f"{process.PROGRESS_PREFIX} {fraction:.4f} {one_line}"
    event = process.parse_line(line + "\n")
    assert event == process.ProgressEvent(round(fraction, 4), one_line)
    assert parse_progress_line(line) == (event.fraction, event.message)


def test_error_line_format_is_the_libraries():
    """The engine's error lines carry what the library reads (type, message) plus the exit code, as JSON."""
    format_error_line = engine_attr("format_error_line", PROTOCOL_MODULE)
    parse_error_line = engine_attr("parse_error_line", PROTOCOL_MODULE)
    exc = CancelledError("cancelled by\nthe user")
    line = format_error_line(exc)
    assert line.startswith(process.ERROR_PREFIX + " {")
    assert process.parse_line(line) == ("CancelledError", "cancelled by the user")
    assert parse_error_line(line) == {"type": "CancelledError", "message": "cancelled by the user",
                                      "exit_code": process.CANCELLED_EXIT_CODE}
    # the line the library's own tests feed it is one the engine reads the same way
    library_line = '{} {{"type": "ResourceError", "message": "CUDA out of memory"}}'.format(process.ERROR_PREFIX)
    assert process.parse_line(library_line) == ("ResourceError", "CUDA out of memory")
    assert parse_error_line(library_line) == {"type": "ResourceError", "message": "CUDA out of memory"}
    assert parse_error_line("BRAINFM_PROGRESS 0.5000 half") is None and engine_attr(
        "parse_progress_line", PROTOCOL_MODULE)(library_line) is None


# -------------------------------------------------------------------------------- brainfm run
def test_task_names_precisions_and_frames_are_the_engines():
    from brainfm.tasks import TASK_NAMES

    assert parameters.TASKS == tuple(TASK_NAMES) + ("all",)
    assert set(parameters.PRECISIONS) == set(engine_option("run", "--precision").choices)
    assert set(parameters.OUTPUT_FRAMES) == set(engine_option("run", "--output-frame").choices)
    assert "machine" in engine_option("run", "--progress").choices
    assert set(parameters.BIAS_METHODS) == set(engine_option("run", "--bias-method").choices)
    assert set(parameters.REG_METHODS) == set(engine_option("run", "--reg-method").choices)
    assert set(parameters.SEG_METHODS) == set(engine_option("run", "--seg-method").choices)
    assert set(parameters.SYNTH_METHODS) == set(engine_option("run", "--synth-method").choices)


def test_run_options_are_parsed_by_the_engine_as_meant(tmp_path):
    atlas = tmp_path / "atlas.nii.gz"
    atlas.write_bytes(b"")
    p = parameters.RunParameters(tasks=("seg", "reg"), model="official", model_sha256="AB" * 32, atlas=str(atlas),
                                 device="cuda:1", precision="bf16", tile_size=96, memory_gb=6.5,
                                 output_frame="1mm", crop_foreground=False, probabilities=True, frame=2,
                                 allow_thick_slices=True, bias_method="fit", reg_method="head", seg_method="head", synth_method="head")
    assert p.is_valid() == (True, "")
    assert parameters.RunParameters(bias_method="n4").is_valid() == (
        False, "Unknown bias-field method 'n4'; use auto, fit, head.")
    assert parameters.RunParameters(reg_method="syn").is_valid() == (
        False, "Unknown registration method 'syn'; use auto, fit, head.")
    assert parameters.RunParameters(seg_method="gmm").is_valid() == (
        False, "Unknown segmentation method 'gmm'; use auto, fit, head.")
    assert parameters.RunParameters(synth_method="copy").is_valid() == (
        False, "Unknown synthesis method 'copy'; use auto, fit, head.")
    ns = engine_parse(["run", "scan.nii", "-o", str(tmp_path / "out"), *p.as_arg_list()])
    assert (ns.tasks, ns.model, ns.sha256, ns.atlas) == ("seg,reg", "official", "ab" * 32, str(atlas))
    assert (ns.device, ns.precision, ns.tile_size, ns.memory_gb) == ("cuda:0", "bf16", 96, 6.5)
    assert (ns.output_frame, ns.no_crop, ns.probabilities, ns.frame) == ("1mm", True, True, 2)
    assert (ns.progress, ns.no_png, ns.no_compress, ns.bias_method, ns.reg_method, ns.seg_method) == (
        "machine", True, True, "fit", "head", "head")
    assert ns.synth_method == "head" and ns.allow_anisotropic is True
    # options the library leaves out must mean the library's defaults to the engine
    default = parameters.RunParameters()
    ns = engine_parse(["run", "scan.nii", "-o", str(tmp_path / "out"), *default.as_arg_list()])
    assert (ns.tasks, ns.model, ns.device, ns.precision) == ("all", "default", "auto", default.precision)
    assert ns.output_frame == default.output_frame and ns.no_crop is not default.crop_foreground
    assert (ns.probabilities, ns.frame, ns.sha256, ns.atlas, ns.tile_size, ns.memory_gb) == (
        False, None, None, None, None, None)
    assert ns.bias_method == default.bias_method == "auto" and ns.reg_method == default.reg_method == "auto"
    assert ns.seg_method == default.seg_method == "auto" and ns.synth_method == default.synth_method == "auto"
    assert ns.allow_anisotropic is default.allow_thick_slices is False
    assert engine_option("run", "--model").default == registry.DEFAULT_ID


def test_output_keys_are_the_engines():
    outputs = engine_outputs()
    tables = {"seg_volumes"}  # the table of the segmentation task (``seg_volumes.csv``)
    assert set(results.OUTPUT_LABELS) == set(outputs) | tables
    assert set(results.OPTIONAL_KEYS) <= set(outputs) and set(results.ATLAS_GRID_KEYS) <= set(outputs)
    from brainfm.tasks import TASKS

    assert "seg" in TASKS["seg"].outputs  # the key the library imports as a segmentation


def test_the_modules_output_keys_and_tasks_are_the_engines():
    """The task modules map their output roles to output keys and their choices to task names."""
    from brainfm.tasks import TASK_NAMES, TASKS

    outputs = engine_outputs()
    linked = set(literal_assignment(parse_py(MODULE_SUPPORT / "logic.py"), "LINKED_KEYS"))
    assert linked == {"seg_labelmap"}  # the label map node made from ``seg``, not a file of its own
    known = set(outputs) | {"seg_volumes"} | linked
    for module in TASK_MODULES:
        logic = find_class(parse_py(module_py(module)), f"{module}Logic")
        values = {n.targets[0].id: ast.literal_eval(n.value) for n in logic.body
                  if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
                  and n.targets[0].id in ("OUTPUTS", "MODEL_TASKS")}
        assert set(values["OUTPUTS"].values()) <= known, f"{module}Logic.OUTPUTS: {values['OUTPUTS']}"
        assert set(values["MODEL_TASKS"]) <= set(TASK_NAMES), f"{module}Logic.MODEL_TASKS"
    contrasts = literal_assignment(parse_py(module_py("BrainFMSynthesis")), "CONTRASTS")
    for choice, (task, key) in contrasts.items():
        assert TASKS[task].outputs == (key,), f"BrainFMSynthesis contrast {choice}: {task} -> {key}"
    labels = literal_assignment(parse_py(MODULE_SUPPORT / "models.py"), "TASK_LABELS")
    assert list(labels) == list(TASK_NAMES)


# ------------------------------------------------------------------------------ model store
def test_models_add_protocol_is_the_engines(tmp_path):
    from brainfm.models import store

    assert model_add.MODEL_PREFIX == engine_attr("MODEL_PREFIX", "brainfm.cli.models_cmd")
    assert model_add.STORAGE == store.STORAGE
    weights = str(tmp_path / "brainfm_pretrained.pth")
    for storage in model_add.STORAGE:
        command = model_add.add_model_command(weights, name="mine", storage=storage, python="python")
        assert command[:3] == ["python", "-m", "brainfm"]
        ns = engine_parse(command[3:])
        assert (ns.models_command, ns.file, ns.name, ns.storage, ns.progress) == (
            "add", weights, "mine", storage, "machine")


def test_finetune_command_scheme_and_model_names_are_the_engines(tmp_path):
    """``brainfm finetune`` takes the library's command as meant; the fs33 values, the model-name rule, the
    reserved names and the modes are the engine's (the JSON line it prints is read in test_lib_finetune.py's real run)."""
    from brainfm.labels import get_scheme
    from brainfm.models import store

    assert training_pairs.FS33_VALUES == tuple(v for v in get_scheme("fs33").fs_values if v)
    assert finetune_job.MODEL_NAME_RE.pattern == store.NAME_RE.pattern
    assert finetune_job.RESERVED_NAMES == store.RESERVED_NAMES
    assert finetune_job.DEFAULT_STEPS == engine_attr("FINETUNE_DEFAULTS", "brainfm.training.finetune_options")["steps"]
    table = str(tmp_path / "label_table.csv")
    command = finetune_job.finetune_command(tmp_path / "data", tmp_path / "run", model="official", steps=7,
                                            name="mine", label_scheme=table, device="cpu", python="python")
    assert command[:3] == ["python", "-m", "brainfm"]
    ns = engine_parse(command[3:])
    assert (ns.command, ns.model, ns.data, ns.out, ns.label_scheme, ns.steps, ns.name, ns.device, ns.progress) == (
        "finetune", "official", str(tmp_path / "data"), str(tmp_path / "run"), table, 7, "mine", "cpu", "machine")
    assert set(finetune_job.MODES) <= set(engine_attr("MODES", "brainfm.training.finetune"))
    assert engine_parse(finetune_job.finetune_command("d", "r", name="x", mode="encoder", python="p")[3:]).mode \
        == "encoder"


def _keys_read_by_choice_from_dict() -> set:
    """The keys :func:`BrainFMSceneLib.registry.choice_from_dict` reads (``d.get("...")`` in its source)."""
    func = next(n for n in parse_py(SCENE_LIB / "registry.py").body
                if isinstance(n, ast.FunctionDef) and n.name == "choice_from_dict")
    return {call.args[0].value for call in ast.walk(func)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "get"
            and ast.unparse(call.func.value) == "d" and call.args and isinstance(call.args[0], ast.Constant)}


def test_model_records_have_the_keys_the_library_reads(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from brainfm.models import BrainFMNet, ModelConfig, registry as engine_registry, save_native, selection, store

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(engine_registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=2, heads={"segmentation": 33}))
    weights, _ = save_native(net, tmp_path / "m" / "tiny.safetensors", info={"name": "tiny", "version": "0"})
    store.add_model(weights, name="tiny")
    found = selection.available_models()
    assert [d["name"] for d in found] == ["tiny"]
    wanted = _keys_read_by_choice_from_dict()
    assert {"name", "path", "sha256", "format", "tasks", "heads", "storage", "is_default"} <= wanted
    assert wanted <= set(found[0]), f"the engine's model record lacks {wanted - set(found[0])}"
    choice = registry.choice_from_dict(found[0])
    assert (choice.id, choice.spec, choice.kind) == ("tiny", "tiny", "store")
    assert "seg" in choice.tasks and choice.heads == {"segmentation": 33}
    assert choice.sha256 == store.find_model("tiny").sha256


def test_model_ids_and_pages_are_the_engines(tmp_path, monkeypatch):
    from brainfm.models import registry as engine_registry, selection

    assert registry.OFFICIAL_PAGE == selection.OFFICIAL_PAGE
    assert registry.OFFICIAL_ID in [e["id"] for e in engine_registry.list_entries()]
    assert registry.DEFAULT_ID == engine_option("run", "--model").default
    monkeypatch.delenv("BRAINFM_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the engine creates its cache folder when asked for it
    assert registry.DEFAULT_CACHE.expanduser() == engine_registry.cache_dir()
    assert registry.ModelRegistry(custom_file=tmp_path / "custom.json").cache_dir() == engine_registry.cache_dir()


# --------------------------------------------------------------------------- files and tables
def test_exported_formats_are_read_by_the_engine():
    from BrainFMSceneLib import volume_files
    from brainfm.io.formats import EXTENSIONS

    assert set(volume_files.WRITE_EXTENSIONS) <= set(EXTENSIONS)
    assert volume_files.DEFAULT_EXPORT_SUFFIX in volume_files.WRITE_EXTENSIONS


def test_structure_volume_table_of_the_engine_reads_back(tmp_path):
    from brainfm.report.save import write_table_csv
    from brainfm.tasks.segmentation import volume_rows

    rows = volume_rows({17: 8, 53: 5, 2: 3}, 0.5, None)
    path = write_table_csv(rows, tmp_path / "seg_volumes.csv")
    assert table_nodes.rows_from_csv(path) == sorted(rows, key=lambda r: r["value"])


# ------------------------------------------------------------------------------- installation
def test_version_pin_and_torch_requirement_are_the_engines():
    assert LIB_VERSION == brainfm.__version__ == importlib.metadata.version("brainfm")
    requires = [install.split_requirement(r) for r in importlib.metadata.requires("brainfm") or []]
    torch_specifiers = [spec for name, spec in filter(None, requires) if name.lower() == "torch"]
    assert torch_specifiers == [install.TORCH_REQUIREMENT]
    assert "torch" in install.SKIP_PACKAGES
