"""/healthz: is DNS up, which lists and feeds are in force, which policy revision.

For a monitor or a parent's quick check; it says nothing about any child's queries, so it
is open to the LAN. 200 when DNS is serving, 503 when it is not.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from . import readings

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    agent = current_app.config["SAFENEST"]
    up = readings.dns_up(agent)
    body: dict = {"status": "ok" if up else "down", "dns": {"up": up}}
    if agent is not None:
        body["dns"]["listening"] = [
            f"{proto} [{host}]:{port}" if ":" in host else f"{proto} {host}:{port}"
            for proto, host, port in agent.server.addresses
        ]
        body["lists"] = {"source": agent.lists.label, "names": len(agent.lists.index)}
        body["feeds"] = [
            {
                "publisher": f.publisher,
                "version": f.version,
                "issued_at": f.issued_at.isoformat(),
                "expires_at": f.expires_at.isoformat(),
                "expired": f.expired,
            }
            for f in readings.feeds(agent)
        ]
        body["policy"] = {"revision": agent.policy_revision}
        ql = agent.querylog
        body["querylog"] = None
        if ql is not None:
            c = ql.counters()  # dropped: the queue's drops and what a dead writer held
            body["querylog"] = {
                "privacy": ql.privacy(),
                "queued": c["queued"],
                "dropped": c["dropped"],
            }
    return jsonify(body), 200 if up else 503
