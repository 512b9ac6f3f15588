"""What every PostgreSQL connection of the suite shares (a farm's metadata and journals)."""

from __future__ import annotations

import re

# a host that loses its power or its network mid-transaction leaves its sessions (and the
# advisory locks they hold: the farm's collection) to the server until TCP notices: ask
# the kernel to notice in about 25 s, not the default two hours
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg2://...``) as libpq takes it (``postgresql://``)."""
    return re.sub(r"^postgresql\+[A-Za-z0-9_]+://", "postgresql://", url)
