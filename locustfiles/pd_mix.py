"""Mixed long-prefill / short-decode streaming load for pdsuite (see docs/load.md).

    locust -f locustfiles/pd_mix.py --host http://127.0.0.1:8000 --pd-model NAME [--pd-spec spec.yaml]

Importing the glue registers its event listeners and command-line options; PdUser is the class Locust runs.
"""

from suite.load.locust_glue import PdUser

__all__ = ["PdUser"]
