"""What a simulated workload leaves in the store: the stage report a real one writes on success."""

from __future__ import annotations

from collections.abc import Mapping

from sailk8s.envcontract import ATTEMPT, RUN, STAGE, STORE_URI
from sailk8s.ledger import StageResults
from sailk8s.settings import Settings
from sailk8s.store import open_store


def write_simulated_report(env: Mapping[str, str]) -> str | None:
    """Write a report of zero shards for the attempt `env` describes; the problem in words, or None.

    The controller counts a success only when the ledger shows the results, so a simulated
    success must leave them as a real workload does.
    """
    uri = env.get(STORE_URI)
    if not uri or RUN not in env or STAGE not in env:
        return "no store or stage in the pod's environment"
    try:
        settings = Settings(store_endpoint=env.get("SAIL_STORE_ENDPOINT"),
                            store_access_key=env.get("SAIL_STORE_ACCESS_KEY"),
                            store_secret_key=env.get("SAIL_STORE_SECRET_KEY"))
        store = open_store(uri, settings)
        StageResults(store, env[RUN], env[STAGE]).write_report(int(env.get(ATTEMPT, "1")),
                                                               {"shards": 0, "simulated": True})
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None
