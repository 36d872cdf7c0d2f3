"""`factory review RUN_DIR`: a local web app (aiohttp, 127.0.0.1 only) over a finished run. Its JSON API:

    GET  /api/run                     run name, status, filter choices with counts, decision counts
    GET  /api/records?FILTERS         summaries of matching records (principle, outcome, reason, fact,
                                      decision, min_margin, max_margin, q; offset, limit)
    GET  /api/records/ID              one record in full, with word diffs, and its decision
    PUT  /api/records/ID/decision     {version, decision, edited_answer, note}; 409 if version is stale

The page (static/) is plain HTML, CSS and JS, and loads nothing from the network. Requests whose Host
is not 127.0.0.1 or localhost are refused (a web page elsewhere cannot reach the data by DNS tricks),
and writes must be JSON (a cross-site form cannot post one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from factory.errors import FactoryError
from factory.review.runview import RunView
from factory.review.store import Conflict, Decision, ReviewStore

STATIC = Path(__file__).parent / "static"
PAGES = {"app.js": "text/javascript", "app.css": "text/css"}
LOCAL_HOSTS = ("127.0.0.1", "localhost")
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
VIEW: web.AppKey[RunView] = web.AppKey("view", RunView)
STORE: web.AppKey[ReviewStore] = web.AppKey("store", ReviewStore)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    decision: Literal["none", "accepted", "rejected"]
    edited_answer: str | None = None
    note: str = ""


def decision_json(d: Decision) -> dict:
    return d.model_dump() | {"label": d.label}


async def run_info(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    return web.json_response({
        "run": view.dir.name, "status": view.manifest.get("status"), "models": view.manifest.get("models", []),
        "constitution": view.constitution.label, "records": view.records,
        "facets": view.facets | {"decision": view.decision_counts()},
    })


async def list_records(request: web.Request) -> web.Response:
    """One page of the records that match the filters (principle, outcome, reason, fact, decision,
    min_margin, max_margin, q: all must hold), in id order, with how many match in all."""
    q = dict(request.query)
    try:
        offset, limit = max(0, int(q.pop("offset", 0))), max(0, min(int(q.pop("limit", 500)), 5000))
        float(q.get("min_margin") or 0), float(q.get("max_margin") or 0)
    except ValueError:
        raise web.HTTPBadRequest(text="offset, limit, min_margin and max_margin must be numbers") from None
    total, found = request.app[VIEW].page(q, offset, limit)
    return web.json_response({"total": total, "offset": offset, "records": found})


def _entry_id(request: web.Request) -> str:
    record_id = request.match_info["id"]
    if not request.app[VIEW].has(record_id):
        raise web.HTTPNotFound(text=f"no record {record_id} in this run")
    return record_id


async def get_record(request: web.Request) -> web.Response:
    record_id = _entry_id(request)
    detail = request.app[VIEW].detail(record_id)
    return web.json_response(detail | {"decision": decision_json(request.app[STORE].get(record_id))})


async def put_decision(request: web.Request) -> web.Response:
    record_id = _entry_id(request)
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send the decision as application/json")
    try:
        body = DecisionIn.model_validate(await request.json())
    except (ValidationError, json.JSONDecodeError) as e:
        raise web.HTTPBadRequest(text=f"bad decision: {e}") from None
    edit = body.edited_answer
    if edit is not None and not edit.strip():
        raise web.HTTPBadRequest(text="the edited answer is empty; reject the record instead")
    if edit is not None and edit == request.app[VIEW].target(record_id):
        edit = None  # unchanged: no edit
    try:
        saved = request.app[STORE].put(record_id, body.version, body.decision, edit, body.note)
    except Conflict as c:
        return web.json_response({"error": "changed elsewhere (another tab?) since you loaded it",
                                  "decision": decision_json(c.current)}, status=409)
    return web.json_response({"decision": decision_json(saved)})


async def page(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name == "index.html":
        return web.Response(body=(STATIC / name).read_bytes(), content_type="text/html")
    if name not in PAGES:
        raise web.HTTPNotFound()
    return web.Response(body=(STATIC / name).read_bytes(), content_type=PAGES[name])


@web.middleware
async def guard(request: web.Request, handler: Callable) -> web.StreamResponse:
    if request.host.rsplit(":", 1)[0] not in LOCAL_HOSTS:
        raise web.HTTPForbidden(text="the review app answers only on 127.0.0.1 or localhost")
    response = await handler(request)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def build_app(run_dir: Path) -> web.Application:
    app = web.Application(middlewares=[guard])
    app[VIEW] = RunView(run_dir)
    app[STORE] = ReviewStore(run_dir)

    async def close(app: web.Application) -> None:
        app[STORE].close()
        app[VIEW].close()

    app.on_cleanup.append(close)
    app.add_routes([web.get("/", page), web.get("/static/{name}", page), web.get("/api/run", run_info),
                    web.get("/api/records", list_records), web.get("/api/records/{id}", get_record),
                    web.put("/api/records/{id}/decision", put_decision)])
    return app


async def start(app: web.Application, port: int) -> tuple[web.AppRunner, str]:
    """Serve `app` on 127.0.0.1:`port` (0: any free port); returns the runner and the URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise FactoryError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); choose another --port") from None
    bound = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{bound}/"


def serve(run_dir: Path, port: int, announce: Callable[[str], None]) -> None:
    """Serve until interrupted (Ctrl-C)."""
    app = build_app(run_dir)

    async def main() -> None:
        runner, url = await start(app, port)
        announce(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
