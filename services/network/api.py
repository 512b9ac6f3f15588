"""The network service's contract (re-exported from ``flotilla.libs.api.network``)."""

from flotilla.libs.api.network import *  # noqa: F401,F403
