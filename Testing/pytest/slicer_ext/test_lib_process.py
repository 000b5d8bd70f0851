"""BrainFMSceneLib ProcessRunner with real child processes (progress, errors, cancel of the tree)."""
from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from BrainFMSceneLib._errors import CancelledError, CheckpointError, InputError
from BrainFMSceneLib.process import LogEvent, ProcessResult, ProcessRunner, ProgressEvent, brainfm_command, parse_line

DEADLINE_S = 60  # generous upper bound for a loaded CI machine; never asserted on


def _script(body: str) -> list:
    return [sys.executable, "-c", textwrap.dedent(body)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by init) is dead
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _poll_until(runner, predicate):
    end = time.monotonic() + DEADLINE_S
    seen = []
    while time.monotonic() < end:
        seen.extend(runner.poll())
        if predicate(seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"condition not reached; events: {seen}")


def test_parse_line():
    assert parse_line("BRAINFM_PROGRESS 0.4200 predicting tile 3/8\n") == ProgressEvent(0.42, "predicting tile 3/8")
    assert parse_line("BRAINFM_PROGRESS 1.7 x") == ProgressEvent(1.0, "x")
    assert parse_line("BRAINFM_PROGRESS abc") == LogEvent("BRAINFM_PROGRESS abc")
    assert parse_line('BRAINFM_ERROR {"type": "ResourceError", "message": "CUDA out of memory"}') == (
        "ResourceError", "CUDA out of memory")
    assert parse_line("BRAINFM_ERROR not json") == ("BrainFMError", "not json")
    assert parse_line("plain text") == LogEvent("plain text")


def test_progress_log_environment_and_temp_dir():
    code = """
        import os, sys
        print("starting", flush=True)
        for f in (0.1, 0.5, 0.9):
            print(f"BRAINFM_PROGRESS {f:.4f} step {f}", flush=True)
        print("warning on stderr", file=sys.stderr, flush=True)
        print("CVD=" + os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), flush=True)
        print("CWD=" + os.getcwd(), flush=True)
    """
    runner = ProcessRunner()
    tmp = runner.temp_dir
    assert tmp.name.startswith("BrainFM-") and stat.S_IMODE(tmp.stat().st_mode) == 0o700
    fractions, logs, finished = [], [], []
    runner.progress.connect(lambda f, m: fractions.append((f, m)))
    runner.log.connect(logs.append)
    runner.finished.connect(finished.append)
    runner.start(_script(code), env_updates={"CUDA_VISIBLE_DEVICES": "-1"}, cwd=tmp)
    events = _poll_until(runner, lambda ev: any(isinstance(e, ProcessResult) for e in ev))
    result = events[-1]
    assert isinstance(result, ProcessResult) and result.ok and result.exit_code == 0
    assert [f for f, _ in fractions] == [0.1, 0.5, 0.9] and fractions[1][1] == "step 0.5"
    assert "warning on stderr" in logs and "CVD=-1" in logs and f"CWD={tmp}" in logs
    assert finished == [result] and result.progress == 1.0 and result.exception() is None
    assert runner.poll() == [] and not runner.running
    runner.cleanup()
    assert not tmp.exists()


def test_engine_error_line_and_exit_codes():
    fail = """
        import sys
        print("BRAINFM_PROGRESS 0.2000 reading", flush=True)
        print('BRAINFM_ERROR {"type": "InputError", "message": "volume is 2D; BrainFM needs a 3D volume"}', flush=True)
        sys.exit(2)
    """
    with ProcessRunner() as runner:
        result = runner.start(_script(fail)).wait(timeout=DEADLINE_S)
    assert not result.ok and result.exit_code == 2 and not result.cancelled
    assert result.error_type == "InputError" and "3D volume" in result.error_message
    assert isinstance(result.exception(), InputError)
    with pytest.raises(InputError, match="2D"):
        result.raise_for_error()
    crash = "import sys; print('loading weights', flush=True); sys.exit(3)"
    with ProcessRunner() as runner:
        result = runner.start([sys.executable, "-c", crash]).wait(timeout=DEADLINE_S)
    assert result.exit_code == 3 and result.error_type == "CheckpointError"
    assert "loading weights" in result.error_message and isinstance(result.exception(), CheckpointError)


def test_rejects_shell_strings_and_double_start():
    runner = ProcessRunner()
    with pytest.raises(TypeError, match="list"):
        runner.start("python -c 'print(1)'")
    runner.start([sys.executable, "-c", "pass"])
    with pytest.raises(RuntimeError, match="already started"):
        runner.start([sys.executable, "-c", "pass"])
    assert runner.wait(timeout=DEADLINE_S).ok
    runner.cleanup()


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
@pytest.mark.parametrize("ignore_term", [False, True])
def test_cancel_kills_the_whole_process_tree(tmp_path, ignore_term):
    pid_file = tmp_path / "grandchild.pid"
    code = f"""
        import signal, subprocess, sys, time
        if {ignore_term}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(g.pid))
        print("BRAINFM_PROGRESS 0.1000 running", flush=True)
        time.sleep(600)
    """
    runner = ProcessRunner(kill_grace_s=0.5, keep_temp=True)
    keep = runner.temp_dir
    runner.start(_script(code))
    _poll_until(runner, lambda ev: any(isinstance(e, ProgressEvent) for e in ev))
    grandchild = int(pid_file.read_text())
    child = runner.pid
    assert _alive(grandchild) and _alive(child)
    runner.cancel()
    result = runner.wait(timeout=DEADLINE_S)
    assert result.cancelled and result.exit_code == 130 and result.error_type == "CancelledError"
    assert isinstance(result.exception(), CancelledError)
    end = time.monotonic() + DEADLINE_S
    while (_alive(grandchild) or _alive(child)) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(grandchild), "grandchild survived the cancel"
    assert not _alive(child)
    runner.cleanup()
    assert keep.is_dir()  # keep_temp=True
    keep.rmdir()


def test_wait_timeout_then_cancel():
    runner = ProcessRunner(kill_grace_s=0.5)
    runner.start([sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(TimeoutError):
        runner.wait(timeout=0.3)
    assert runner.running
    runner.cancel()
    assert runner.wait(timeout=DEADLINE_S).cancelled
    runner.cleanup()


def test_brainfm_command_is_an_argument_list(tmp_path):
    cmd = brainfm_command(tmp_path / "in put.nii", tmp_path / "out", ["--tasks", "seg"], python="/x/PythonSlicer")
    assert cmd == ["/x/PythonSlicer", "-m", "brainfm", "run", str(tmp_path / "in put.nii"), "-o",
                   str(tmp_path / "out"), "--tasks", "seg"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX sessions")
def test_detached_grandchild_holding_the_pipe_does_not_hang_wait(tmp_path, monkeypatch):
    import BrainFMSceneLib.process as process_module

    monkeypatch.setattr(process_module, "ORPHAN_PIPE_GRACE_S", 0.3)
    pid_file = tmp_path / "detached.pid"
    code = f"""
        import subprocess, sys
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        open({str(pid_file)!r}, "w").write(str(g.pid))
        print("BRAINFM_PROGRESS 1.0000 done", flush=True)
    """
    try:
        with ProcessRunner() as runner:
            result = runner.start(_script(code)).wait(timeout=DEADLINE_S)  # would time out without the fix
            assert result.ok and result.progress == 1.0
            assert runner.poll() == []  # a late end-of-output marker does not finish twice
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), 9)  # the detached process escaped on purpose: clean it up
