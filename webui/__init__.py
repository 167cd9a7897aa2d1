"""The admin server: a Flask application served by waitress inside `safenest run`.

`create_app(test_config)` builds it; the running Agent is ``config["SAFENEST"]`` and every
page reads it (counters, the lists and feeds in force, the policy revision) from the admin
server's threads, never writing to it. Blueprints so far: ``health`` (/healthz) and
``metrics`` (/metrics, for Prometheus, answered only to ``metrics_clients``). The parents'
pages come next. webui/server.py runs it in a background thread of the agent.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

DEFAULT_METRICS_CLIENTS = ["127.0.0.0/8", "::1/128"]


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The admin application. Config keys: SAFENEST (the Agent, or None: the pages say DNS is
    down), METRICS_CLIENTS (networks allowed to read /metrics)."""
    app = Flask(__name__)
    app.config.from_mapping(SAFENEST=None, METRICS_CLIENTS=list(DEFAULT_METRICS_CLIENTS))
    if test_config is not None:
        app.config.from_mapping(test_config)

    from . import health, metrics

    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    metrics.init_app(app)
    return app
