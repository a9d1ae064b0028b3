"""Tiny fake workloads obeying the env contract, for controller and local backend tests.

Behaviour per stage comes from $CTL_FAKE (JSON): {"<stage>": {"shards": 3, "sleep": 0.1,
"fail": {"<attempt>": <exit code>}, "fail_after": 1, "fail_rank": 0, "hang": false}}.
"""
