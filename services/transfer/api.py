"""The transfer service's contract (re-exported from ``flotilla.libs.api.transfer``)."""

from flotilla.libs.api.transfer import *  # noqa: F401,F403
