"""The page: a side panel (scan, model, tasks, Apply/Cancel, layers, segments, structure volumes,
download) and the trame-slicer views (three slice views and the 3D view).

Elements that people and the browser test look for carry ``id`` attributes (``brainfm-*``).
"""
from __future__ import annotations

from typing import Any

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui, create_vertical_view_gutter_ui

UPLOAD_ACCEPT = ".nii,.nii.gz,.gz,.mgz,.mgh,.nrrd,.mha"


def _section(title: str) -> None:
    html.Div(title, classes="text-subtitle-2 mt-3 mb-1")


def build_page(server: Any, layout_manager: Any) -> SinglePageWithDrawerLayout:
    """Build the page on ``server``; the views go where ``layout_manager`` puts its grid."""
    ctrl = server.controller
    with SinglePageWithDrawerLayout(server, width=380, theme="dark") as layout:
        layout.title.set_text("BrainFM Web")
        with layout.toolbar:
            v3.VSpacer()
            html.Span("{{ scan_name }}", id="brainfm-scan-name", classes="mr-4 text-body-2")
            v3.VChip("{{ status }}", id="brainfm-status", size="small", classes="mr-2",
                     color=("status === 'completed' ? 'green' : status === 'failed' ? 'red' : "
                            "status === 'running' ? 'blue' : 'grey'",))
        layout.footer.clear()
        with layout.footer:
            html.Span("{{ message }}", id="brainfm-message", classes="text-caption")
        with layout.drawer, html.Div(classes="pa-3"):
            _scan_section(ctrl)
            _run_section(ctrl)
            _results_section()
        with layout.content, html.Div(style="height: calc(100vh - 90px); position: relative;"):
            layout_manager.initialize_layout_grid(layout)
    return layout


def _scan_section(ctrl: Any) -> None:
    _section("Scan")
    html.Input(type="file", id="brainfm-upload", accept=UPLOAD_ACCEPT, disabled=("running",),
               change="window.brainfmUpload($event.target.files[0], brainfm_token); $event.target.value = null",
               classes="text-body-2 mb-1", style="width: 100%")
    html.Div("Upload (at most {{ max_upload_mb }} MiB) or open a file on the server:",
             classes="text-caption mb-1")
    with html.Div(classes="d-flex align-center"):
        v3.VTextField(v_model=("scan_path",), id="brainfm-path", label="Path on the server",
                      density="compact", hide_details=True, disabled=("running",))
        v3.VBtn("Open", id="brainfm-open", click=ctrl.brainfm_open_path, disabled=("running",),
                size="small", classes="ml-2")


def _run_section(ctrl: Any) -> None:
    _section("Model")
    v3.VSelect(v_model=("model",), items=("models",), item_title="title", item_value="value",
               id="brainfm-model", density="compact", hide_details=True, disabled=("running",),
               item_props=("(item) => ({disabled: !item.available, subtitle: item.message || item.description})",))
    v3.VTextField(v_model=("model_path",), id="brainfm-model-path", label="or a model file on the server",
                  density="compact", hide_details=True, classes="mt-1", disabled=("running",))
    _section("Tasks")
    with html.Div(classes="d-flex flex-wrap"):
        v3.VCheckbox(v_for="t in task_items", key="t.value", v_model=("tasks",), value=("t.value",),
                     label=("t.title",), density="compact", hide_details=True, multiple=True,
                     disabled=("running",), style="flex: 0 0 50%", id=("'brainfm-task-' + t.value",))
    v3.VSelect(v_model=("device",), items=("devices",), label="Device", density="compact",
               hide_details=True, classes="mt-2", disabled=("running",), id="brainfm-device")
    v3.VCheckbox(v_model=("one_mm_grid",), label="Results grid: 1 mm", id="brainfm-one-mm-grid",
                 density="compact", hide_details=True, disabled=("running",),
                 title="Results on a 1 mm grid over the head instead of the scan's grid: finer for thick-slice scans")
    v3.VCheckbox(v_model=("allow_thick_slices",), label="Allow slices thicker than 10 mm", id="brainfm-allow-thick",
                 density="compact", hide_details=True, disabled=("running",),
                 title="Such scans are refused by default: too little of the anatomy survives slices that thick "
                       "for reliable results")
    with html.Div(classes="d-flex align-center mt-3"):
        v3.VBtn("Apply", id="brainfm-apply", color="primary", click=ctrl.brainfm_apply,
                disabled=("running || !has_scan",), v_show="!running")
        v3.VBtn("Cancel", id="brainfm-cancel", color="warning", click=ctrl.brainfm_cancel, v_show="running")
        v3.VProgressLinear(model_value=("progress",), id="brainfm-progress", height=8, classes="ml-3",
                           color="primary", active=("running || status === 'completed'",))
    v3.VAlert(text=("error",), v_if="error", type="error", density="compact", id="brainfm-error",
              classes="mt-2 text-body-2")
    html.Pre("{{ log_tail }}", v_if="running && log_tail", classes="text-caption mt-1",
             style="white-space: pre-wrap; max-height: 8em; overflow: auto;")


def _results_section() -> None:
    with html.Div(v_if="layers.length"):
        _section("Layers")
        v3.VSelect(v_model=("background_id",), items=("layers",), label="Background", density="compact",
                   hide_details=True, id="brainfm-background")
        v3.VSelect(v_model=("foreground_id",), items=("layers",), label="Foreground", density="compact",
                   hide_details=True, clearable=True, classes="mt-1", id="brainfm-foreground")
        v3.VSlider(v_model=("foreground_opacity",), min=0, max=1, step=0.05, label="Opacity",
                   density="compact", hide_details=True, v_if="foreground_id")
    with html.Div(v_if="segments.length", id="brainfm-segments"):
        _section("Segments ({{ segments.length }})")
        with html.Div(style="max-height: 14em; overflow: auto;"):
            with html.Div(v_for="s in segments", key="s.value", classes="d-flex align-center text-body-2"):
                html.Span(style=("{display: 'inline-block', width: '12px', height: '12px', marginRight: '6px', "
                                 "background: s.color}",))
                html.Span("{{ s.name }}", classes="brainfm-segment-name")
                v3.VSpacer()
                html.Span("{{ s.value }}", classes="text-caption")
    with html.Div(v_if="volume_rows.length", id="brainfm-volumes"):
        _section("Structure volumes")
        v3.VDataTable(items=("volume_rows",), density="compact", items_per_page=8,
                      headers=("[{title: 'Label', key: 'value'}, {title: 'Structure', key: 'name'}, "
                               "{title: 'Volume (mm³)', key: 'volume_mm3'}]",))
    v3.VBtn("Download results (zip)", id="brainfm-download", v_if="has_results", click="window.brainfmDownload(brainfm_token)",
            prepend_icon="mdi-download", classes="mt-3", block=True)


def slice_view_overlay(server: Any, view_id: str, view: Any) -> None:
    """trame-slicer's slice gutter (slider, buttons) plus the structure name under the mouse."""
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    tag = view.get_singleton_tag()
    html.Div(id=f"brainfm-view-{tag}", style="display: none;")  # marks the view's container
    html.Div("{{ hover_text }}", v_if=f"hover_view === '{tag}' && hover_text", classes="brainfm-hover",
             style=("position: absolute; top: 6px; right: 8px; padding: 2px 8px; border-radius: 4px; "
                    "background: rgba(0,0,0,0.6); color: white; font-size: 13px; pointer-events: none;"))


def threed_view_overlay(server: Any, view_id: str, view: Any) -> None:
    """trame-slicer's 3D view gutter (reset camera) plus the marker of the view's container."""
    create_vertical_view_gutter_ui(server, view_id, view)
    html.Div(id=f"brainfm-view-{view.get_singleton_tag()}", style="display: none;")
