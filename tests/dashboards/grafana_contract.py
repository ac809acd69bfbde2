"""A small real HTTP server that speaks the parts of Grafana 11's HTTP API that ``push`` uses.

Not a mock of our code: it implements Grafana's contract — paths, status codes, response shapes,
server-side additions (ids, versions, provenance, ``for`` normalised to Go durations), and the
validations that make ordering matter (a rule needs its folder and data source, a policy needs
its receivers). Every request is recorded so tests can assert what was sent.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from dashboards.alerting import duration_s

DEFAULT_RECEIVER = "grafana-default-email"


@dataclass
class Request:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


def _go_duration(text: str) -> str:
    """Grafana answers durations in Go's format: 2m -> 2m0s, 0s -> 0s."""
    s = duration_s(text)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


class FakeGrafana:
    """State + routing. ``requests`` lists every call; ``writes`` the non-GET ones."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[Request] = []
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.groups: dict[tuple[str, str], int] = {}
        self.contact_points: dict[str, dict[str, Any]] = {}
        self.policy: dict[str, Any] = {
            "receiver": DEFAULT_RECEIVER,
            "group_by": ["grafana_folder", "alertname"],
        }
        # "" = editable in the UI; "api" = locked (written without X-Disable-Provenance); "file" = provisioned
        self.policy_provenance = ""
        self._ids = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def __enter__(self) -> FakeGrafana:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # ------------------------------------------------------------------ routing
    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p][1:]  # drop "api"
        provenance = "" if headers.get("X-Disable-Provenance", "").lower() == "true" else "api"
        if parts[:1] == ["folders"]:
            return self._folders(method, parts[1:], body)
        if parts[:2] == ["datasources", "uid"] or parts == ["datasources"]:
            return self._datasources(method, parts[2:], body)
        if parts[:1] == ["dashboards"]:
            return self._dashboards(method, parts[1:], body)
        if parts[:2] == ["v1", "provisioning"]:
            return self._provisioning(method, parts[2:], query, body, provenance)
        return 404, {"message": "Not found"}

    def _folders(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "GET" and not rest:
            return 200, [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.folders.values()]
        if method == "POST" and not rest:
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            if any(f["title"] == body["title"] for f in self.folders.values()):
                return 409, {"message": "a folder with the same name already exists"}
            self.folders[body["uid"]] = {
                "id": self._next_id(),
                "uid": body["uid"],
                "title": body["title"],
                "url": f"/dashboards/f/{body['uid']}/",
                "version": 1,
            }
            return 200, self.folders[body["uid"]]
        folder = self.folders.get(rest[0]) if rest else None
        if folder is None:
            return 404, {"message": "folder not found", "status": "not-found"}
        if method == "GET":
            return 200, folder
        if method == "PUT":
            folder.update(title=body["title"], version=folder["version"] + 1)
            return 200, folder
        return 405, {"message": "method not allowed"}

    def _datasources(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "POST" and not rest:
            if any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            self.datasources[body["uid"]] = self._store_ds(body, version=1)
            return 200, {
                "datasource": self._public_ds(body["uid"]),
                "id": self.datasources[body["uid"]]["id"],
                "message": "Datasource added",
                "name": body["name"],
            }
        if rest and rest[0] in self.datasources:
            if method == "GET":
                return 200, self._public_ds(rest[0])
            if method == "PUT":
                old = self.datasources[rest[0]]
                self.datasources[rest[0]] = self._store_ds(body, version=old["version"] + 1, ds_id=old["id"])
                return 200, {"datasource": self._public_ds(rest[0]), "message": "Datasource updated"}
        return 404, {"message": "Data source not found"}

    def _store_ds(self, body: dict[str, Any], *, version: int, ds_id: int | None = None) -> dict[str, Any]:
        ds = copy.deepcopy(body)
        ds.update(id=ds_id or self._next_id(), orgId=1, version=version, readOnly=False, basicAuth=False)
        return ds

    def _public_ds(self, uid: str) -> dict[str, Any]:
        ds = copy.deepcopy(self.datasources[uid])
        secure = ds.pop("secureJsonData", {}) or {}
        ds["secureJsonFields"] = {k: True for k in secure}
        return ds

    def _dashboards(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "POST" and rest == ["db"]:
            board = copy.deepcopy(body["dashboard"])
            uid = board["uid"]
            if body.get("folderUid") and body["folderUid"] not in self.folders:
                return 400, {"message": "folder not found"}
            old = self.dashboards.get(uid)
            if old is not None and not body.get("overwrite") and board.get("version") != old["dashboard"]["version"]:
                return 412, {
                    "message": "The dashboard has been changed by someone else",
                    "status": "version-mismatch",
                }
            version = old["dashboard"]["version"] + 1 if old else 1
            board.update(id=old["dashboard"]["id"] if old else self._next_id(), version=version)
            self.dashboards[uid] = {
                "dashboard": board,
                "meta": {"folderUid": body.get("folderUid", ""), "version": version, "slug": uid},
            }
            return 200, {
                "id": board["id"],
                "uid": uid,
                "url": f"/d/{uid}/{uid}",
                "status": "success",
                "version": version,
                "slug": uid,
            }
        if method == "GET" and rest[:1] == ["uid"] and rest[1] in self.dashboards:
            return 200, copy.deepcopy(self.dashboards[rest[1]])
        return 404, {"message": "Dashboard not found"}

    def _provisioning(
        self, method: str, rest: list[str], query: dict[str, list[str]], body: Any, provenance: str
    ) -> tuple[int, Any]:
        if rest[:1] == ["alert-rules"]:
            return self._rules(method, rest[1:], body, provenance)
        if rest[:1] == ["folder"] and rest[2:3] == ["rule-groups"]:
            key = (rest[1], rest[3])
            if key not in self.groups:
                return 404, {"message": "rule group not found"}
            if method == "PUT":
                self.groups[key] = body["interval"]
            rules = [self._public_rule(u) for u, r in self.rules.items() if (r["folderUID"], r["ruleGroup"]) == key]
            return 200, {"title": key[1], "folderUid": key[0], "interval": self.groups[key], "rules": rules}
        if rest == ["contact-points"]:
            if method == "GET":
                name = query.get("name", [None])[0]
                return 200, [copy.deepcopy(c) for c in self.contact_points.values() if name in (None, c["name"])]
            if method == "POST":
                self.contact_points[body["uid"]] = {**copy.deepcopy(body), "provenance": "api"}
                return 202, self.contact_points[body["uid"]]
        if rest[:1] == ["contact-points"] and len(rest) == 2:
            if rest[1] not in self.contact_points:
                return 404, {"message": "contact point not found"}
            if method == "PUT":
                self.contact_points[rest[1]] = {**copy.deepcopy(body), "provenance": "api"}
                return 202, {"message": "contactpoint updated"}
            if method == "DELETE":
                del self.contact_points[rest[1]]
                return 202, {"message": "contactpoint deleted"}
        if rest == ["policies"]:
            if method == "GET":
                shown = copy.deepcopy(self.policy)
                return 200, {**shown, "provenance": self.policy_provenance} if self.policy_provenance else shown
            if method == "PUT":
                if self.policy_provenance == "file":
                    return 400, {"message": "cannot change provenance from 'file' to 'api'"}
                names = {c["name"] for c in self.contact_points.values()} | {DEFAULT_RECEIVER}
                missing = _receivers(body) - names
                if missing:
                    return 400, {
                        "message": f"invalid object specification: receiver '{sorted(missing)[0]}' does not exist"
                    }
                self.policy = copy.deepcopy(body)
                self.policy_provenance = provenance
                return 202, {"message": "policies updated"}
        return 404, {"message": "Not found"}

    def _rules(self, method: str, rest: list[str], body: Any, provenance: str) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                return 200, [self._public_rule(u) for u in self.rules]
            if method == "POST":
                problem = self._invalid_rule(body)
                if problem:
                    return 400, {"message": problem}
                if body["uid"] in self.rules:
                    return 409, {"message": "a rule with this uid already exists"}
                self.rules[body["uid"]] = {**copy.deepcopy(body), "id": self._next_id(), "provenance": provenance}
                self.groups.setdefault((body["folderUID"], body["ruleGroup"]), 60)
                return 201, self._public_rule(body["uid"])
        uid = rest[0]
        if uid not in self.rules:
            return 404, {"message": "rule not found"}
        if method == "GET":
            return 200, self._public_rule(uid)
        if method in ("PUT", "DELETE") and self.rules[uid]["provenance"] not in ("", provenance):
            # Grafana: a provisioned rule may only be changed through the same kind of provisioning
            was = self.rules[uid]["provenance"]
            return 400, {"message": f"cannot change provenance from '{was}' to '{provenance}'"}
        if method == "PUT":
            problem = self._invalid_rule(body)
            if problem:
                return 400, {"message": problem}
            self.rules[uid] = {**copy.deepcopy(body), "id": self.rules[uid]["id"], "provenance": provenance}
            return 200, self._public_rule(uid)
        if method == "DELETE":
            del self.rules[uid]
            return 204, None
        return 405, {"message": "method not allowed"}

    def _invalid_rule(self, rule: dict[str, Any]) -> str | None:
        if rule.get("folderUID") not in self.folders:
            return f"folder {rule.get('folderUID')} does not exist"
        for item in rule["data"]:
            if item["datasourceUid"] != "__expr__" and item["datasourceUid"] not in self.datasources:
                return f"data source {item['datasourceUid']} does not exist"
        if rule["condition"] not in {d["refId"] for d in rule["data"]}:
            return "condition refers to an unknown refId"
        titles = {r["title"] for u, r in self.rules.items() if u != rule["uid"] and r["folderUID"] == rule["folderUID"]}
        if rule["title"] in titles:
            return "a rule with the same title already exists in the folder"
        return None

    def _public_rule(self, uid: str) -> dict[str, Any]:
        rule = copy.deepcopy(self.rules[uid])
        rule.update(
            {
                "for": _go_duration(rule["for"]),
                "updated": "2026-11-23T18:00:00Z",
                "orgID": 1,
            }
        )
        return rule

    # ------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with fake._lock:
                    fake.requests.append(Request(self.command, url.path, body, dict(self.headers)))
                    if self.headers.get("Authorization") != f"Bearer {fake.token}":
                        status, payload = 401, {"message": "Unauthorized"}
                    else:
                        status, payload = fake.handle(
                            self.command, url.path, parse_qs(url.query), body, dict(self.headers)
                        )
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler


def _receivers(route: dict[str, Any]) -> set[str]:
    out = {route["receiver"]} if route.get("receiver") else set()
    for child in route.get("routes") or []:
        out |= _receivers(child)
    return out
