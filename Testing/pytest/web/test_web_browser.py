"""BrainFM Web in a real browser: Debian's chromium (headless) driven by Selenium against
``brainfm-web`` on localhost, with a tiny random-weight model and generated scans.

Needs the web environment (``.venv-web``, see README; or ``BRAINFM_WEB_COMMAND``), ``chromium`` +
``chromedriver`` and ``selenium``; skips with a message when one is missing.
``BRAINFM_WEB_SCREENSHOTS=<folder>`` also writes the screenshots there (the README's pictures).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from web_helpers import write_model, write_scan

REPO = Path(__file__).resolve().parents[3]
TOKEN = "browser-test-token"
MAX_UPLOAD_MB = 4
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1600,1000")
FREESURFER_PREFIXES = ("Left-", "Right-", "Brain-Stem", "CSF", "3rd-Ventricle", "4th-Ventricle")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow


def _web_command() -> list:
    env = os.environ.get("BRAINFM_WEB_COMMAND")
    if env:
        return env.split()
    exe = REPO / ".venv-web" / "bin" / "brainfm-web"
    if not exe.is_file():
        pytest.skip("web environment not installed: python3 -m venv .venv-web && .venv-web/bin/pip install "
                    "-e ./BrainFMCore -e ./BrainFMSlicer/BrainFMWeb (see README), or set BRAINFM_WEB_COMMAND")
    return [str(exe)]


def _browser_paths() -> tuple:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver not installed (Debian: apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web_allowed")
    return {"folder": folder,
            "scan": write_scan(folder / "generated_head.nii.gz"),
            "large": write_scan(folder / "large_head.nii.gz", shape=(144, 160, 136), spacing=(1.0, 1.0, 1.0)),
            "model": write_model(folder / "tiny_fs33"),
            "slow_model": write_model(folder / "wide_fs33", f_maps=32, num_levels=4, seed=5)}


@pytest.fixture(scope="module")
def server(data, tmp_path_factory):
    """``brainfm-web --port 0`` on localhost; yields its base URL."""
    command = _web_command()
    _browser_paths()
    log_path = tmp_path_factory.mktemp("web_server") / "server.log"
    args = [*command, "--port", "0", "--allowed-dir", str(data["folder"]), "--model", str(data["model"]),
            "--max-upload-mb", str(MAX_UPLOAD_MB), "--token", TOKEN]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("BrainFM Web is ready: "):
                url = line.split(": ", 1)[1].split("/?", 1)[0]
        if url:
            break
        time.sleep(0.3)
    if url is None:
        proc.kill()
        pytest.fail("brainfm-web did not start:\n" + log_path.read_text(errors="replace")[-4000:])
    assert url.startswith("http://localhost:")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = chromium
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.get(f"{server}/?secret={TOKEN}")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "brainfm-apply"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("BRAINFM_WEB_SCREENSHOTS")

    def save(element_or_driver, name: str) -> Path:
        path = folder / name
        if hasattr(element_or_driver, "save_screenshot"):
            element_or_driver.save_screenshot(str(path))
        else:
            element_or_driver.screenshot(str(path))
        assert path.stat().st_size > 10_000  # a real picture, not an empty one
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / name)
        return path

    return save


def _get(url: str, *, token: str = TOKEN) -> bytes:
    request = urllib.request.Request(url, headers={"X-BrainFM-Token": token})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def _scene(server: str) -> dict:
    return json.loads(_get(f"{server}/brainfm/scene"))


def _text(driver, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].text.strip() if found else ""


def _wait_status(driver, statuses, timeout: float = 150) -> str:
    _until(driver, lambda d: _text(d, "brainfm-status") in statuses, f"status in {statuses}", timeout)
    return _text(driver, "brainfm-status")


def _until(driver, condition, what: str, timeout: float = 60):
    """Wait for ``condition``; on timeout fail with what the page says (status, message, error)."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        page = {k: _text(driver, f"brainfm-{k}") for k in ("status", "message", "error", "scan-name")}
        pytest.fail(f"timed out after {timeout} s waiting for {what}; page: {page}")


def _click(driver, element) -> None:
    driver.execute_script("arguments[0].click();", element)


def _type(driver, element_id: str, text: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{element_id}")
    field.send_keys(Keys.CONTROL, "a")  # select and replace: clear() bypasses the page's input events
    field.send_keys(Keys.DELETE)
    field.send_keys(text)


def _view(driver, tag: str):
    return driver.find_element(By.XPATH, f"//*[@id='brainfm-view-{tag}']/..")


def _select(driver, element_id: str, title: str) -> None:
    field = driver.find_element(By.ID, element_id).find_element(By.XPATH, "./ancestor::div[contains(@class, 'v-field')][1]")
    ActionChains(driver).move_to_element(field).click().perform()
    WebDriverWait(driver, 20).until(
        lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, ".v-overlay .v-list-item") if i.text.strip() == title])
    item = [i for i in driver.find_elements(By.CSS_SELECTOR, ".v-overlay .v-list-item") if i.text.strip() == title][0]
    _click(driver, item)


def test_upload_segment_and_see_freesurfer_structures(server, browser, data, shots):
    driver = browser
    driver.find_element(By.ID, "brainfm-upload").send_keys(str(data["scan"]))
    _until(driver, lambda d: _text(d, "brainfm-scan-name") == "generated_head", "the uploaded scan to open")
    _click(driver, driver.find_element(By.ID, "brainfm-task-t1"))
    # the grid options for thick-slice scans are offered, unticked: results on the scan's grid
    for option in ("brainfm-one-mm-grid", "brainfm-allow-thick"):
        assert not driver.find_element(By.ID, option).is_selected(), option
    _click(driver, driver.find_element(By.ID, "brainfm-apply"))
    status = _wait_status(driver, ("completed", "failed"))
    assert status == "completed", _text(driver, "brainfm-error")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CLASS_NAME, "brainfm-segment-name"))

    # segments with FreeSurfer names: in the page and in the server's MRML scene, the same ones
    page_names = [e.get_attribute("textContent").strip() for e in driver.find_elements(By.CLASS_NAME, "brainfm-segment-name")]
    assert len(page_names) >= 5 and all(n.startswith(FREESURFER_PREFIXES) for n in page_names), page_names
    scene = _scene(server)
    segmentations = list(scene["segmentations"].values())
    assert len(segmentations) == 1 and sorted(segmentations[0]) == sorted(page_names)
    names = {n["name"] for n in scene["nodes"]}
    assert {"generated_head", "generated_head segmentation", "generated_head synthetic T1w",
            "generated_head structure volumes"} <= names
    assert any(n in _text(driver, "brainfm-volumes") for n in page_names)  # structure-volume table

    # the structure under the mouse, as the segment's name
    red = _view(driver, "Red")
    ActionChains(driver).move_to_element(red).perform()
    for dx in (0, 7, -9, 13):
        ActionChains(driver).move_to_element_with_offset(red, dx, dx // 2).perform()
        time.sleep(0.4)
        hover = [e.text for e in driver.find_elements(By.CLASS_NAME, "brainfm-hover") if e.text.strip()]
        if hover:
            break
    assert hover and hover[0].rsplit(" (", 1)[0] in page_names, hover
    shots(driver, "brainfm_web_segmentation.png")
    shots(_view(driver, "ThreeD"), "brainfm_web_3d.png")

    # result volumes are layers: the synthetic T1 as the background of the slice views
    _select(driver, "brainfm-background", "generated_head synthetic T1w")
    time.sleep(1.5)
    shots(driver, "brainfm_web_t1_layer.png")

    # the case folder as a zip
    assert driver.find_element(By.ID, "brainfm-download").is_displayed()
    archive = Path(data["folder"]).parent / "download.zip"
    archive.write_bytes(_get(f"{server}/brainfm/download"))
    members = zipfile.ZipFile(archive).namelist()
    assert {"generated_head/summary.json", "generated_head/seg_volumes.csv"} <= set(members)
    assert any(m.startswith("generated_head/seg.nii") for m in members)


def test_server_listens_on_localhost_only(server):
    port = int(server.rsplit(":", 1)[1])
    table = Path("/proc/net/tcp")
    if not table.is_file():
        pytest.skip("no /proc/net/tcp on this system")
    listening = set()
    for path in (table, Path("/proc/net/tcp6")):
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.add(address)
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    assert listening and listening <= loopback, listening


def test_paths_outside_and_oversized_uploads_are_refused(server, browser, data, tmp_path):
    driver = browser
    before = _scene(server)["nodes"]
    _type(driver, "brainfm-path", "/etc/passwd")
    _click(driver, driver.find_element(By.ID, "brainfm-open"))
    _until(driver, lambda d: "outside the folders" in _text(d, "brainfm-error"), "the refusal message", 30)
    big = b"\0" * (MAX_UPLOAD_MB * 2**20 + 1)
    request = urllib.request.Request(f"{server}/brainfm/upload?name=big.nii", data=big, method="POST",
                                     headers={"X-BrainFM-Token": TOKEN})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(f"{server}/brainfm/scene", token="wrong")
    assert err.value.code == 403
    assert _scene(server)["nodes"] == before
    assert not any(p.name.startswith("big") for p in Path(data["folder"]).iterdir())


def test_cancel_a_long_run_leaves_the_scene_unchanged(server, browser, data):
    driver = browser
    _type(driver, "brainfm-path", str(data["large"]))
    _click(driver, driver.find_element(By.ID, "brainfm-open"))
    _until(driver, lambda d: _text(d, "brainfm-scan-name") == "large_head", "the large scan to open")
    _type(driver, "brainfm-model-path", str(data["slow_model"]))
    before = _scene(server)
    _click(driver, driver.find_element(By.ID, "brainfm-apply"))
    _wait_status(driver, ("running",), timeout=30)
    # wait until the child reports progress (the model is loaded and the run is under way)
    _until(driver, lambda d: _text(d, "brainfm-status") != "running" or
           float(d.find_element(By.ID, "brainfm-progress").get_attribute("aria-valuenow") or 0) > 5,
           "progress of the run")
    assert _text(driver, "brainfm-status") == "running", "the run ended before it could be cancelled"
    _click(driver, driver.find_element(By.ID, "brainfm-cancel"))
    assert _wait_status(driver, ("cancelled", "completed", "failed"), timeout=60) == "cancelled"
    after = _scene(server)
    assert after["nodes"] == before["nodes"] and after["segmentations"] == before["segmentations"]
    assert after["status"] == "cancelled"
    assert not driver.find_elements(By.CLASS_NAME, "brainfm-segment-name")
