"""HTTP routes of the web app (aiohttp, on the trame server), each guarded by the access token.

=========================  ===========================================================
``POST brainfm/upload``    body = the scan file; ``?name=`` its file name. Streamed to a
                           private folder, refused past the size limit (413), then opened.
``GET brainfm/download``   the case folder of the last run as a zip.
``GET brainfm/scene``      JSON: data nodes, segments of each segmentation, run status.
=========================  ===========================================================

The token comes as the ``X-BrainFM-Token`` header or the ``token`` query parameter.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any

from aiohttp import web

from BrainFMSceneLib._errors import InputError
from brainfm_web.files import UploadTooLarge, save_upload

LOG = logging.getLogger("brainfm_web")
CHUNK = 1 << 20


def _authorized(request: web.Request, token: str) -> bool:
    given = request.headers.get("X-BrainFM-Token") or request.query.get("token") or ""
    return hmac.compare_digest(given.encode(), token.encode())


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(aiohttp_app: web.Application, app: Any) -> None:
    """Register the routes of :class:`brainfm_web.app.BrainFMWebApp` ``app`` on the aiohttp application."""

    async def upload(request: web.Request) -> web.Response:
        if not _authorized(request, app.token):
            return _error(403, "missing or wrong access token")
        if app.session.running:
            return _error(409, "a BrainFM run is in progress: cancel it before opening another scan")
        name = request.query.get("name", "")

        async def chunks():
            while True:
                block = await request.content.read(CHUNK)
                if not block:
                    return
                yield block

        path = None
        try:
            path = await save_upload(chunks(), name, app.workdir / "uploads", max_bytes=app.max_upload_bytes,
                                     declared_size=request.content_length)
            node = app.session.open_volume(path)
        except UploadTooLarge as exc:
            app.show_error(exc)
            return _error(413, str(exc))
        except InputError as exc:
            app.show_error(exc)
            return _error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - unreadable file: the reader's message
            LOG.exception("upload failed")
            app.show_error(exc)
            return _error(400, app.session.error_text(exc))
        finally:
            if path is not None:
                path.unlink(missing_ok=True)  # the scene holds the scan now
        app.show_scan(node)
        return web.json_response({"ok": True, "name": node.GetName()})

    async def download(request: web.Request) -> web.StreamResponse:
        if not _authorized(request, app.token):
            return _error(403, "missing or wrong access token")
        try:
            archive = app.session.zip_results()
        except InputError as exc:
            return _error(404, str(exc))
        return web.FileResponse(archive, headers={
            "Content-Disposition": f'attachment; filename="{archive.name}"',
            "Content-Type": "application/zip", "Cache-Control": "no-store"})

    async def scene(request: web.Request) -> web.Response:
        if not _authorized(request, app.token):
            return _error(403, "missing or wrong access token")
        return web.json_response(app.summary())

    aiohttp_app.router.add_post("/brainfm/upload", upload)
    aiohttp_app.router.add_get("/brainfm/download", download)
    aiohttp_app.router.add_get("/brainfm/scene", scene)
