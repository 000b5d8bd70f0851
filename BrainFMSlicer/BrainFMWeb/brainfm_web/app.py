"""The BrainFM web application: trame-slicer views around one :class:`~brainfm_web.session.WebSession`.

The page (``ui.build_page``) sends the user's choices as trame state; this class turns them into
session calls, drives the running job from an asyncio task (progress, cancel), shows the results as
Slicer would (segmentation over the scan in the slice views with the structure name under the
mouse, the segments' surfaces in the 3D view, result volumes as layers) and serves the HTTP side
(``routes``: upload, zip download, scene summary).
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from trame.app import get_server
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from brainfm_web import routes, ui
from brainfm_web.files import AllowedFolders
from brainfm_web.session import DEVICE_CHOICES, TASK_CHOICES, WebSession

LOG = logging.getLogger("brainfm_web")
STATIC = Path(__file__).resolve().parent / "static"
POLL_S = 0.2
LAYOUT = "Quad View"


class BrainFMWebApp:
    """Server side of the page.

    :param allowed: folders whose scans/models may be opened by path.
    :param workdir: private folder for uploads and case folders.
    :param models: weights files offered besides the registry's models.
    :param python: interpreter of the ``brainfm run`` child process.
    :param max_upload_bytes: upload limit.
    :param token: access token required by the websocket and the HTTP routes.
    """

    def __init__(self, *, allowed: AllowedFolders, workdir: Path, models: Sequence[str] = (),
                 python: Optional[str] = None, max_upload_bytes: int, token: str, server: Any = None) -> None:
        self.server = server or get_server(None, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.server.enable_module({"serve": {"__brainfm_web": str(STATIC)}, "scripts": ["__brainfm_web/brainfm.js"]})
        self.token = token
        self.workdir = Path(workdir)
        self.max_upload_bytes = int(max_upload_bytes)
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self.session = WebSession(self.scene, workdir=self.workdir, allowed=allowed, python=python,
                                  extra_models=models)
        self._hover_observed: set = set()
        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=self._slice_view_ui,
                               three_d_view_ui_f=ui.threed_view_overlay)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        self._init_state()
        self.server.controller.on_server_bind.add(lambda ws: routes.add_routes(ws.app, self))
        self.server.controller.on_server_ready.add(self._on_ready)
        self.server.state.change("background_id")(self._on_background)
        self.server.state.change("foreground_id", "foreground_opacity")(self._on_foreground)
        ctrl = self.server.controller
        ctrl.brainfm_open_path = self.open_path
        ctrl.brainfm_apply = self.apply
        ctrl.brainfm_cancel = self.cancel
        self.ui = ui.build_page(self.server, self.layout_manager)

    # -- state -----------------------------------------------------------------------------------
    def _init_state(self) -> None:
        state = self.server.state
        options = self.session.model_options()
        first = next((o["value"] for o in reversed(options) if o["available"]), options[0]["value"] if options else "")
        state.update({
            "trame__title": "BrainFM Web",
            "brainfm_token": self.token,  # sent only to clients that connected with the token
            "models": options, "model": first, "model_path": "",
            "task_items": [{"value": v, "title": t} for v, t in TASK_CHOICES], "tasks": ["seg"],
            "devices": list(DEVICE_CHOICES), "device": "auto", "one_mm_grid": False, "allow_thick_slices": False,
            "scan_path": "", "scan_name": "", "has_scan": False,
            "status": "idle", "running": False, "progress": 0.0, "message": "Open a scan to start.",
            "error": "", "log_tail": "",
            "layers": [], "background_id": None, "foreground_id": None, "foreground_opacity": 0.5,
            "segments": [], "volume_rows": [], "has_results": False,
            "hover_view": "", "hover_text": "", "max_upload_mb": round(self.max_upload_bytes / 2**20, 1),
        })

    def _push_session(self) -> None:
        """Copy the session's run state into the page state (inside ``with state``)."""
        s, state = self.session, self.server.state
        state.status, state.running = s.status, s.running
        state.progress = round(100.0 * s.progress, 1)
        state.message = s.message
        state.error = s.error
        state.log_tail = "\n".join(s.log[-12:])

    def show_error(self, exc: BaseException) -> None:
        """Show ``exc`` in the page's error box."""
        with self.server.state:
            self.server.state.error = self.session.error_text(exc)

    # -- actions ---------------------------------------------------------------------------------
    def open_path(self) -> None:
        """Open the scan named in the page's "path on the server" field."""
        try:
            self.show_scan(self.session.open_server_path(self.server.state.scan_path))
        except Exception as exc:  # noqa: BLE001 - shown in the page
            self.show_error(exc)

    def show_scan(self, node: Any) -> None:
        """Show a newly opened scan in every view and reset the results panel."""
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(node)
        display.show_volume_in_slice_foreground(None)
        display.reset_views()
        with self.server.state as state:
            state.scan_name, state.has_scan = node.GetName(), True
            state.layers = self.session.layers()
            state.background_id, state.foreground_id = node.GetID(), None
            state.segments, state.volume_rows, state.has_results = [], [], False
            self._push_session()

    def apply(self) -> None:
        """Start BrainFM with the page's model, tasks, device and grid options."""
        state = self.server.state
        model = str(state.model_path or "").strip() or state.model
        try:
            self.session.start(tasks=list(state.tasks or []), model=model, device=state.device,
                               one_mm_grid=bool(state.one_mm_grid), allow_thick_slices=bool(state.allow_thick_slices))
        except Exception as exc:  # noqa: BLE001 - shown in the page
            with state:
                self._push_session()
                state.error = self.session.error_text(exc)
            return
        with state:
            self._push_session()

    def cancel(self) -> None:
        """Cancel the running job (its child process tree is stopped)."""
        self.session.cancel()
        with self.server.state:
            self._push_session()

    # -- job loop --------------------------------------------------------------------------------
    def _on_ready(self, **_: Any) -> None:
        create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if not self.session.running:
                continue
            try:
                still = self.session.poll()
            except Exception as exc:  # noqa: BLE001 - never let the loop die
                LOG.exception("BrainFM run failed")
                self.session.status, self.session.error = "failed", self.session.error_text(exc)
                still = False
            with self.server.state:
                self._push_session()
            if not still and self.session.status == "completed":
                self.show_results()

    def show_results(self) -> None:
        """Segmentation in the slice views and as surfaces in 3D; layers; tables."""
        seg = self.session.segmentation_node
        if seg is not None:
            seg.CreateClosedSurfaceRepresentation()
            display = seg.GetDisplayNode()
            if display is not None:
                display.SetVisibility(True)
                display.SetOpacity2DFill(0.45)
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
        with self.server.state as state:
            state.layers = self.session.layers()
            state.segments = self.session.segments()
            state.volume_rows = [{**r, "volume_mm3": round(r["volume_mm3"], 1)} for r in self.session.structure_rows()]
            state.has_results = self.session.case_dir is not None

    # -- layers ----------------------------------------------------------------------------------
    def _on_background(self, background_id: Optional[str] = None, **_: Any) -> None:
        if background_id and self.scene.GetNodeByID(background_id) is not None:
            self.slicer_app.display_manager.show_volume_in_slice_background(self.scene.GetNodeByID(background_id))

    def _on_foreground(self, foreground_id: Optional[str] = None, foreground_opacity: float = 0.5, **_: Any) -> None:
        node = self.scene.GetNodeByID(foreground_id) if foreground_id else None
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_volume_id(node.GetID() if node is not None else None)
            view.set_foreground_opacity(float(foreground_opacity or 0.0))

    # -- structure name under the mouse ----------------------------------------------------------
    def _slice_view_ui(self, server: Any, view_id: str, view: Any) -> None:
        ui.slice_view_overlay(server, view_id, view)
        self._observe_hover(view)

    def _observe_hover(self, view: Any) -> None:
        tag = view.get_singleton_tag()
        if tag in self._hover_observed:
            return
        self._hover_observed.add(tag)
        interactor = view.interactor()

        def on_move(*_: Any) -> None:
            x, y = interactor.GetEventPosition()
            self.hover(view, x, y)

        # high priority: Slicer's slice interactor style consumes mouse moves before default observers
        interactor.AddObserver("MouseMoveEvent", on_move, 10.0)

    def hover(self, view: Any, x: float, y: float) -> None:
        """Show the structure under display point ``(x, y)`` of slice ``view``."""
        xy_to_ras = view.get_view_node().GetXYToRAS()
        ras = xy_to_ras.MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3]
        hit = self.session.label_at(ras)
        text = f"{hit['name']} ({hit['value']})" if hit else ""
        state = self.server.state
        if state.hover_text != text or state.hover_view != view.get_singleton_tag():
            with state:
                state.hover_view, state.hover_text = view.get_singleton_tag(), text

    def summary(self) -> Dict[str, Any]:
        """Scene summary plus what the page shows (for the ``brainfm/scene`` route)."""
        out = self.session.scene_summary()
        out["page"] = {"segments": [s["name"] for s in self.server.state.segments or []],
                       "layers": [layer["title"] for layer in self.server.state.layers or []]}
        return out

